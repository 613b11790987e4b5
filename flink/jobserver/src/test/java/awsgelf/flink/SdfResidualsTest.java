package awsgelf.flink;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import org.apache.beam.runners.core.InMemoryStateInternals;
import org.apache.beam.runners.core.InMemoryStateInternals.InMemoryMap;
import org.apache.beam.runners.core.InMemoryStateInternals.InMemoryValue;
import org.apache.beam.runners.core.StateNamespace;
import org.apache.beam.runners.core.StateNamespaces;
import org.apache.beam.runners.core.StateTag;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.coders.StringUtf8Coder;
import org.apache.beam.sdk.fn.IdGenerator;
import org.apache.beam.sdk.state.BagState;
import org.apache.beam.sdk.state.CombiningState;
import org.apache.beam.sdk.state.MapState;
import org.apache.beam.sdk.state.MultimapState;
import org.apache.beam.sdk.state.OrderedListState;
import org.apache.beam.sdk.state.SetState;
import org.apache.beam.sdk.state.StateBinder;
import org.apache.beam.sdk.state.StateSpec;
import org.apache.beam.sdk.state.ValueState;
import org.apache.beam.sdk.state.WatermarkHoldState;
import org.apache.beam.sdk.transforms.Combine;
import org.apache.beam.sdk.transforms.CombineWithContext;
import org.apache.beam.sdk.transforms.windowing.TimestampCombiner;
import org.junit.Test;

public class SdfResidualsTest {
  private static final Coder<String> CODER = StringUtf8Coder.of();

  /** Keyed state of one key as Flink keeps it: one registered state per name, for ever. */
  static final class RegisteredStates implements StateBinder {
    final Map<String, Object> byName = new LinkedHashMap<>();

    @Override
    @SuppressWarnings("unchecked")
    public <T> ValueState<T> bindValue(String id, StateSpec<ValueState<T>> spec, Coder<T> coder) {
      return (ValueState<T>) byName.computeIfAbsent(id, name -> new InMemoryValue<>(coder));
    }

    @Override
    @SuppressWarnings("unchecked")
    public <K, V> MapState<K, V> bindMap(
        String id, StateSpec<MapState<K, V>> spec, Coder<K> keyCoder, Coder<V> valueCoder) {
      return (MapState<K, V>)
          byName.computeIfAbsent(id, name -> new InMemoryMap<>(keyCoder, valueCoder));
    }

    <T> ValueState<T> state(StateTag<ValueState<T>> tag) {
      return tag.getSpec().bind(tag.getId(), this);
    }

    @Override
    public <T> BagState<T> bindBag(String id, StateSpec<BagState<T>> spec, Coder<T> coder) {
      throw new UnsupportedOperationException();
    }

    @Override
    public <T> SetState<T> bindSet(String id, StateSpec<SetState<T>> spec, Coder<T> coder) {
      throw new UnsupportedOperationException();
    }

    @Override
    public <T> OrderedListState<T> bindOrderedList(
        String id, StateSpec<OrderedListState<T>> spec, Coder<T> coder) {
      throw new UnsupportedOperationException();
    }

    @Override
    public <K, V> MultimapState<K, V> bindMultimap(
        String id, StateSpec<MultimapState<K, V>> spec, Coder<K> keyCoder, Coder<V> valueCoder) {
      throw new UnsupportedOperationException();
    }

    @Override
    public <I, A, O> CombiningState<I, A, O> bindCombining(
        String id,
        StateSpec<CombiningState<I, A, O>> spec,
        Coder<A> coder,
        Combine.CombineFn<I, A, O> fn) {
      throw new UnsupportedOperationException();
    }

    @Override
    public <I, A, O> CombiningState<I, A, O> bindCombiningWithContext(
        String id,
        StateSpec<CombiningState<I, A, O>> spec,
        Coder<A> coder,
        CombineWithContext.CombineFnWithContext<I, A, O> fn) {
      throw new UnsupportedOperationException();
    }

    @Override
    public WatermarkHoldState bindWatermark(
        String id, StateSpec<WatermarkHoldState> spec, TimestampCombiner combiner) {
      throw new UnsupportedOperationException();
    }
  }

  /** Beam's handler names each residual "sdf_checkpoint:<id>:<index>". */
  private static String timerId(IdGenerator ids, int index) {
    return "sdf_checkpoint:" + ids.getId() + ":" + index;
  }

  @Test
  public void aThousandHandBacksRegisterOneStateAndLeaveItEmptyOnceResumed() {
    RegisteredStates states = new RegisteredStates();
    IdGenerator ids = SdfResiduals.checkpointIds();
    for (int handBack = 0; handBack < 1000; handBack++) {
      String timer = timerId(ids, 0);
      states.state(SdfResiduals.residual(timer, CODER)).write("shard-0000 at " + handBack);
      // What the timer does when it fires: read the residual to resume it.
      assertEquals("shard-0000 at " + handBack, states.state(SdfResiduals.residual(timer, CODER)).read());
    }
    assertEquals(Set.of(SdfResiduals.STATE_NAME), states.byName.keySet());
    MapState<String, String> residuals = states.bindMap(SdfResiduals.STATE_NAME, null, CODER, CODER);
    assertTrue(residuals.isEmpty().read());
  }

  @Test
  public void residualsWaitingTogetherUnderOneKeyKeepTheirOwnEntries() {
    RegisteredStates states = new RegisteredStates();
    IdGenerator ids = SdfResiduals.checkpointIds();
    String first = timerId(ids, 0);
    String second = timerId(ids, 1);
    states.state(SdfResiduals.residual(first, CODER)).write("shard-0000");
    states.state(SdfResiduals.residual(second, CODER)).write("shard-0001");
    assertEquals("shard-0001", states.state(SdfResiduals.residual(second, CODER)).read());
    assertEquals("shard-0000", states.state(SdfResiduals.residual(first, CODER)).read());
    assertNull("read once", states.state(SdfResiduals.residual(first, CODER)).read());
  }

  @Test
  public void flinkBatchsInMemoryStateFindsTheResidualAgainByItsTimer() {
    // FlinkExecutableStageFunction keeps residuals in InMemoryStateInternals, found again by tag.
    InMemoryStateInternals<String> batch = InMemoryStateInternals.forKey("sdf_state");
    StateNamespace global = StateNamespaces.global();
    String timer = timerId(SdfResiduals.checkpointIds(), 0);
    batch.state(global, SdfResiduals.residual(timer, CODER)).write("shard-0000");
    assertEquals("shard-0000", batch.state(global, SdfResiduals.residual(timer, CODER)).read());
    assertNull(batch.state(global, SdfResiduals.residual(timer, CODER)).read());
  }

  @Test
  public void idsDoNotRepeatAfterARestoreAsBeamsCounterDoes() {
    Set<String> seen = new HashSet<>();
    for (int run = 0; run < 20; run++) {
      IdGenerator ids = SdfResiduals.checkpointIds();
      for (int n = 0; n < 50; n++) {
        String timer = timerId(ids, 0);
        assertTrue(SdfResiduals.isPatchedTimerId(timer));
        assertTrue(timer + " repeated", seen.add(timer));
      }
    }
  }

  @Test
  public void aResidualCheckpointedBeforeThePatchIsReadFromItsOwnStateAndCleared() {
    RegisteredStates states = new RegisteredStates();
    String legacy = "sdf_checkpoint:7:1";
    assertFalse(SdfResiduals.isPatchedTimerId(legacy));
    states.bindValue(legacy, null, CODER).write("shard-0001 from an old checkpoint");
    assertEquals(
        "shard-0001 from an old checkpoint", states.state(SdfResiduals.residual(legacy, CODER)).read());
    assertNull(states.bindValue(legacy, null, CODER).read());
    assertFalse(states.byName.containsKey(SdfResiduals.STATE_NAME));
  }
}

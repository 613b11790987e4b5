package awsgelf.flink;

import java.util.Objects;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Pattern;
import org.apache.beam.runners.core.StateTag;
import org.apache.beam.runners.core.StateTags;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.coders.StringUtf8Coder;
import org.apache.beam.sdk.fn.IdGenerator;
import org.apache.beam.sdk.state.MapState;
import org.apache.beam.sdk.state.StateBinder;
import org.apache.beam.sdk.state.StateSpec;
import org.apache.beam.sdk.state.StateSpecs;
import org.apache.beam.sdk.state.ValueState;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Where the Flink runner keeps the residuals a splittable DoFn hands back (apache/beam#27648).
 *
 * <p>Beam 2.62 stores each residual in a value state named after its timer, a name never used again:
 * Flink registers a new keyed state for every hand-back and carries its description in every
 * checkpoint for ever, so a polling reader's checkpoints grow by hundreds of KB a minute. The build
 * ({@link awsgelf.flink.build.PatchSdfResiduals}) points the three places that name that state at
 * {@link #residual} instead, which keeps every residual of a key in one map state entry, removed
 * when its timer fires; and at {@link #checkpointIds}, whose ids do not repeat after a restore.
 */
public final class SdfResiduals {
  /** The one Flink keyed state (per key and window) that holds the residuals waiting to resume. */
  public static final String STATE_NAME = "aws_gelf_sdf_residuals";

  private static final Logger LOG = LoggerFactory.getLogger(SdfResiduals.class);
  private static final Pattern OUR_TIMER_IDS =
      Pattern.compile("sdf_checkpoint:[0-9a-f]{16}-[0-9]+:[0-9]+");

  private SdfResiduals() {}

  /**
   * Checkpoint ids "<random>-<n>": Beam's counter restarts at 1 when a job is restored, so a new
   * residual could take the id of a restored one still waiting under the same key and replace it.
   */
  public static IdGenerator checkpointIds() {
    String run = String.format("%016x", ThreadLocalRandom.current().nextLong());
    AtomicLong next = new AtomicLong();
    LOG.info(
        "aws-gelf-pipelines: SDF residuals are kept in the map state '{}' and removed once resumed"
            + " (patch for apache/beam#27648); checkpoint ids {}-<n>",
        STATE_NAME,
        run);
    return () -> run + "-" + next.incrementAndGet();
  }

  /** The state of the residual behind `timerId`, in place of Beam's value state of that name. */
  public static <T> StateTag<ValueState<T>> residual(String timerId, Coder<T> coder) {
    return StateTags.tagForSpec(timerId, new ResidualSpec<>(coder));
  }

  /** True for the timer ids {@link #checkpointIds} makes; others were set before the patch. */
  static boolean isPatchedTimerId(String timerId) {
    return OUR_TIMER_IDS.matcher(timerId).matches();
  }

  /** Binds a residual to its entry in the shared map, or to its own pre-patch value state. */
  static final class ResidualSpec<T> implements StateSpec<ValueState<T>> {
    private final Coder<T> coder;

    ResidualSpec(Coder<T> coder) {
      this.coder = coder;
    }

    @Override
    public ValueState<T> bind(String timerId, StateBinder binder) {
      if (isPatchedTimerId(timerId)) {
        MapState<String, T> residuals =
            binder.bindMap(
                STATE_NAME, StateSpecs.map(StringUtf8Coder.of(), coder), StringUtf8Coder.of(), coder);
        return new MapEntry<>(residuals, timerId);
      }
      // A residual restored from a checkpoint taken before the patch: read it where it was written.
      return new OwnState<>(binder.bindValue(timerId, StateSpecs.value(coder), coder));
    }

    @Override
    public <ResultT> ResultT match(Cases<ResultT> cases) {
      return cases.dispatchValue(coder);
    }

    @Override
    public void offerCoders(Coder[] coders) {}

    @Override
    public void finishSpecifying() {}

    // Specs are values, as Beam's are: two specs of the same coder are the same spec.
    @Override
    public boolean equals(Object other) {
      return other instanceof ResidualSpec && coder.equals(((ResidualSpec<?>) other).coder);
    }

    @Override
    public int hashCode() {
      return Objects.hash(ResidualSpec.class, coder);
    }
  }

  /**
   * A residual's state, which its timer reads exactly once, to resume it: reading removes it, and a
   * failure after that restores it with the rest of the checkpoint.
   */
  abstract static class TakenOnRead<T> implements ValueState<T> {
    abstract T peek();

    abstract void remove();

    @Override
    public T read() {
      T residual = peek();
      remove();
      return residual;
    }

    @Override
    public ValueState<T> readLater() {
      return this;
    }

    @Override
    public void clear() {
      remove();
    }
  }

  /** One residual's entry in the shared map. */
  static final class MapEntry<T> extends TakenOnRead<T> {
    private final MapState<String, T> residuals;
    private final String timerId;

    MapEntry(MapState<String, T> residuals, String timerId) {
      this.residuals = residuals;
      this.timerId = timerId;
    }

    @Override
    public void write(T residual) {
      residuals.put(timerId, residual);
    }

    @Override
    T peek() {
      return residuals.get(timerId).read();
    }

    @Override
    void remove() {
      residuals.remove(timerId);
    }
  }

  /** A pre-patch residual: its state name stays registered, but its value no longer does. */
  static final class OwnState<T> extends TakenOnRead<T> {
    private final ValueState<T> state;

    OwnState(ValueState<T> state) {
      this.state = state;
    }

    @Override
    public void write(T residual) {
      state.write(residual);
    }

    @Override
    T peek() {
      return state.read();
    }

    @Override
    void remove() {
      state.clear();
    }
  }
}

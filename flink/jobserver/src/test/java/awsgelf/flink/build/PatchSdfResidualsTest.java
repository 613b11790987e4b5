package awsgelf.flink.build;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.junit.Test;
import org.objectweb.asm.ClassReader;
import org.objectweb.asm.ClassVisitor;
import org.objectweb.asm.MethodVisitor;
import org.objectweb.asm.Opcodes;

public class PatchSdfResidualsTest {

  /** "method: owner.name" for every static call in a class. */
  private static List<String> staticCalls(byte[] bytes) {
    List<String> calls = new ArrayList<>();
    new ClassReader(bytes)
        .accept(
            new ClassVisitor(Opcodes.ASM9) {
              @Override
              public MethodVisitor visitMethod(
                  int access, String method, String desc, String signature, String[] exceptions) {
                return new MethodVisitor(Opcodes.ASM9) {
                  @Override
                  public void visitMethodInsn(
                      int opcode, String owner, String name, String calleeDesc, boolean itf) {
                    if (opcode == Opcodes.INVOKESTATIC) {
                      calls.add(method + ": " + owner + "." + name);
                    }
                  }
                };
              }
            },
            0);
    return calls;
  }

  @Test
  public void everyResidualStateCallInThePinnedBeamGoesToOurs() throws Exception {
    int redirected = 0;
    for (PatchSdfResiduals.Patch patch : PatchSdfResiduals.PATCHES) {
      List<String> calls =
          staticCalls(PatchSdfResiduals.patched(patch, PatchSdfResiduals.upstreamClass(patch.className)));
      for (PatchSdfResiduals.Call call : patch.calls) {
        assertTrue(calls.contains(call.method + ": awsgelf/flink/SdfResiduals." + call.replacement));
        assertTrue(
            patch.className, !calls.contains(call.method + ": " + call.owner + "." + call.name));
        redirected++;
      }
    }
    assertEquals(4, redirected);
  }

  @Test
  public void aChangedBeamClassFailsTheBuildNamingIt() throws Exception {
    PatchSdfResiduals.Patch patch = PatchSdfResiduals.PATCHES.get(1);
    byte[] changed = PatchSdfResiduals.upstreamClass(patch.className);
    changed[changed.length - 1] ^= 1;
    IllegalStateException refused =
        assertThrows(IllegalStateException.class, () -> PatchSdfResiduals.patched(patch, changed));
    assertTrue(refused.getMessage(), refused.getMessage().startsWith(patch.className + " is not"));
  }

  @Test
  public void aCallThatIsNotThereOnceFailsTheBuild() throws Exception {
    PatchSdfResiduals.Patch handler = PatchSdfResiduals.PATCHES.get(0);
    PatchSdfResiduals.Patch wrong =
        new PatchSdfResiduals.Patch(
            handler.className,
            handler.sha256,
            List.of(
                new PatchSdfResiduals.Call(
                    "isSdfTimer", handler.calls.get(1).owner, "value", handler.calls.get(1).desc, "residual")));
    byte[] original = PatchSdfResiduals.upstreamClass(handler.className);
    IllegalStateException refused =
        assertThrows(IllegalStateException.class, () -> PatchSdfResiduals.patched(wrong, original));
    assertTrue(refused.getMessage(), refused.getMessage().contains("0 times, not once"));
  }
}

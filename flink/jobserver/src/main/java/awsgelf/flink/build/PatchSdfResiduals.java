package awsgelf.flink.build;

import java.io.IOException;
import java.io.InputStream;
import java.net.URL;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Collections;
import java.util.List;
import org.objectweb.asm.ClassReader;
import org.objectweb.asm.ClassVisitor;
import org.objectweb.asm.ClassWriter;
import org.objectweb.asm.MethodVisitor;
import org.objectweb.asm.Opcodes;

/**
 * Build step: rewrites three Beam 2.62.0 classes so that SDF residuals go through
 * awsgelf.flink.SdfResiduals (apache/beam#27648), and writes them where the shaded jar takes them.
 *
 * <p>Each class is checked byte for byte against the one this patch was written for, and each call
 * it replaces must occur exactly once in its method: a Beam upgrade fails the build here, naming
 * the class, rather than shipping a job server that leaks state again or loses residuals.
 *
 * <p>Usage: {@code PatchSdfResiduals <output classes directory>}, with Beam's runner jars on the
 * class path.
 */
public final class PatchSdfResiduals {
  private static final String OURS = "awsgelf/flink/SdfResiduals";
  private static final String STATE_TAGS = "org/apache/beam/runners/core/StateTags";
  private static final String VALUE_DESC =
      "(Ljava/lang/String;Lorg/apache/beam/sdk/coders/Coder;)Lorg/apache/beam/runners/core/StateTag;";
  private static final String ID_GENERATORS = "org/apache/beam/sdk/fn/IdGenerators";
  private static final String ID_DESC = "()Lorg/apache/beam/sdk/fn/IdGenerator;";

  /** One static call, in one method, to send to SdfResiduals instead. */
  static final class Call {
    final String method;
    final String owner;
    final String name;
    final String desc;
    final String replacement;

    Call(String method, String owner, String name, String desc, String replacement) {
      this.method = method;
      this.owner = owner;
      this.name = name;
      this.desc = desc;
      this.replacement = replacement;
    }
  }

  /** One upstream class, its SHA-256 in Beam 2.62.0, and the calls to redirect in it. */
  static final class Patch {
    final String className;
    final String sha256;
    final List<Call> calls;

    Patch(String className, String sha256, List<Call> calls) {
      this.className = className;
      this.sha256 = sha256;
      this.calls = calls;
    }
  }

  static final List<Patch> PATCHES =
      List.of(
          new Patch(
              "org/apache/beam/runners/fnexecution/control/"
                  + "BundleCheckpointHandlers$StateAndTimerBundleCheckpointHandler",
              "97da4488e73b44818921dbf1dec1aa41f49d2f93f8573102effa17c381c9e8b5",
              List.of(
                  new Call("<init>", ID_GENERATORS, "incrementingLongs", ID_DESC, "checkpointIds"),
                  new Call("onCheckpoint", STATE_TAGS, "value", VALUE_DESC, "residual"))),
          new Patch(
              "org/apache/beam/runners/flink/translation/wrappers/streaming/"
                  + "ExecutableStageDoFnOperator$SdkHarnessDoFnRunner",
              "951d83ff52d17ab87623450559f95b2035422ef2d8f748ac37d651bf4e44ed30",
              List.of(new Call("onTimer", STATE_TAGS, "value", VALUE_DESC, "residual"))),
          new Patch(
              "org/apache/beam/runners/flink/translation/functions/FlinkExecutableStageFunction",
              "30fe333d4dee1cafb11e8979f8983ba97690051c5f8558c6b0686135799e95c9",
              List.of(new Call("mapPartition", STATE_TAGS, "value", VALUE_DESC, "residual"))));

  private PatchSdfResiduals() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      throw new IllegalArgumentException("usage: PatchSdfResiduals <output classes directory>");
    }
    Path output = Path.of(args[0]);
    for (Patch patch : PATCHES) {
      byte[] patched = patched(patch, upstreamClass(patch.className));
      Path target = output.resolve(patch.className + ".class");
      Files.createDirectories(target.getParent());
      Files.write(target, patched);
      System.out.println("[sdf-residuals] patched " + patch.className);
    }
  }

  /** The class with its calls redirected, if it is byte for byte the one the patch expects. */
  static byte[] patched(Patch patch, byte[] original) throws NoSuchAlgorithmException {
    String sha256 = sha256(original);
    if (!sha256.equals(patch.sha256)) {
      throw new IllegalStateException(
          patch.className
              + " is not the Beam 2.62.0 class the SDF residual patch was written for (SHA-256 "
              + sha256
              + "). Check that its residual state calls are still the ones in PATCHES, then"
              + " update the hash, or drop the patch if this Beam has fixed apache/beam#27648.");
    }
    return apply(original, patch);
  }

  /** The class as the dependency jar has it, never a copy patched by an earlier build. */
  static byte[] upstreamClass(String className) throws IOException {
    String resource = className + ".class";
    ClassLoader loader = PatchSdfResiduals.class.getClassLoader();
    for (URL url : Collections.list(loader.getResources(resource))) {
      if ("jar".equals(url.getProtocol())) {
        try (InputStream in = url.openStream()) {
          return in.readAllBytes();
        }
      }
    }
    throw new IllegalStateException(resource + " is in no jar on the class path");
  }

  static byte[] apply(byte[] original, Patch patch) {
    int[] replaced = new int[patch.calls.size()];
    ClassReader reader = new ClassReader(original);
    ClassWriter writer = new ClassWriter(reader, 0);
    reader.accept(
        new ClassVisitor(Opcodes.ASM9, writer) {
          @Override
          public MethodVisitor visitMethod(
              int access, String name, String desc, String signature, String[] exceptions) {
            MethodVisitor next = super.visitMethod(access, name, desc, signature, exceptions);
            return new MethodVisitor(Opcodes.ASM9, next) {
              @Override
              public void visitMethodInsn(
                  int opcode, String owner, String callee, String calleeDesc, boolean itf) {
                for (int i = 0; i < replaced.length; i++) {
                  Call call = patch.calls.get(i);
                  if (opcode == Opcodes.INVOKESTATIC
                      && call.method.equals(name)
                      && call.owner.equals(owner)
                      && call.name.equals(callee)
                      && call.desc.equals(calleeDesc)) {
                    replaced[i]++;
                    super.visitMethodInsn(opcode, OURS, call.replacement, calleeDesc, false);
                    return;
                  }
                }
                super.visitMethodInsn(opcode, owner, callee, calleeDesc, itf);
              }
            };
          }
        },
        0);
    for (int i = 0; i < replaced.length; i++) {
      if (replaced[i] != 1) {
        Call call = patch.calls.get(i);
        throw new IllegalStateException(
            patch.className + "." + call.method + " calls " + call.owner + "."
                + call.name + " " + replaced[i] + " times, not once: the patch no longer fits.");
      }
    }
    return writer.toByteArray();
  }

  static String sha256(byte[] bytes) throws NoSuchAlgorithmException {
    StringBuilder hex = new StringBuilder();
    for (byte b : MessageDigest.getInstance("SHA-256").digest(bytes)) {
      hex.append(String.format("%02x", b));
    }
    return hex.toString();
  }
}

# The inner build of the recursive-Nix example: what the outer build asks for with
# `nix-build`. In the 2019 experiment this was
#
#   runCommand "inside" {} "echo FOO | tee $out"
#
# Here the builder is the busybox toolchain whose store path the outer build passes on
# (`--argstr bb`): it is one of the outer build's inputs, so the inner evaluation — which runs
# inside the outer sandbox — may name it even through a restricted per-build socket.
{ bb }:
let
  busybox = builtins.storePath bb;
in
derivation {
  name = "inside";
  system = builtins.currentSystem;
  builder = "${busybox}/bin/sh";
  PATH = "${busybox}/bin";
  args = [ "-c" "echo FOO | tee $out" ];
}

# The outer build of the recursive-Nix example (the 2019 "recursive Nix" experiment, without
# nixpkgs). In the experiment it was
#
#   runCommand "recursive-nix" { buildInputs = [ nix ]; } ''
#     NIX_PATH=nixpkgs=${pkgs.path} nix-build ${./inner.nix} > $out
#   ''
#
# Its builder runs `nix-build inner.nix` against a Nix daemon, checks that the inner output is
# readable right away, and writes the inner output's path to $out — so, when the daemon tracks
# what a build added, the outer output refers to the inner one.
#
#   nix-build outer.nix --argstr nix <nix bundle> --argstr bb <busybox> [--argstr socket <path>]
#
# * nix: the Nix client as a store path (./make-nix-bundle);
# * bb: a static busybox toolchain as a store path (bin/sh, bin/cat, bin/tee, ...);
# * socket: null (default) for the per-build socket: the derivation requires the
#   `recursive-nix` system feature and the daemon hands it NIX_REMOTE (a private socket in the
#   build dir). A path for "seed style": the build talks to that daemon socket itself, which the
#   daemon must make visible in the sandbox (extra-sandbox-paths) and must accept build users on.
#
# Both store paths are passed as strings and taken with builtins.storePath, so they become
# inputs of the build as they are (a path literal would be copied into the store again).
{ nix, bb, socket ? null }:
let
  nixBundle = builtins.storePath nix;
  busybox = builtins.storePath bb;
  channel =
    if socket == null
    then { requiredSystemFeatures = [ "recursive-nix" ]; }
    else { NIX_REMOTE = "unix://${socket}"; };
in
derivation ({
  name = "recursive-nix";
  system = builtins.currentSystem;
  builder = "${busybox}/bin/sh";
  PATH = "${nixBundle}/bin:${busybox}/bin";
  inner = ./inner.nix;
  inherit busybox;
  args = [ "-euc" ''
    # The client must use the daemon's store dir, which may differ from its compiled-in
    # /nix/store; Nix falls back to $NIX_STORE, which every builder has, but say it. The rest
    # points at the build dir, so that nothing of the host's (/etc/nix/nix.conf, /nix/var)
    # is read even when the sandbox is off. The builder's stdout is a pseudo-terminal, so
    # commands such as `nix-store -q` would start a pager (busybox `less`): NIX_PAGER=cat.
    export NIX_STORE_DIR=$NIX_STORE HOME=$TMPDIR NIX_PAGER=cat
    export NIX_STATE_DIR=$TMPDIR/nix/var NIX_LOG_DIR=$TMPDIR/nix/log NIX_CONF_DIR=$TMPDIR/nix/etc
    echo "outer: NIX_REMOTE=''${NIX_REMOTE:-unset}"
    # --no-out-link: a `result` link in the build dir would only make the daemon register a
    # GC root pointing into the sandbox.
    result=$(nix-build --no-out-link "$inner" --argstr bb "$busybox")
    echo "outer: inner nix-build returned $result"
    contents=$(cat "$result")
    echo "outer: inner output contents: $contents"
    test "$contents" = FOO
    echo "$result" > $out
  '' ];
} // channel)

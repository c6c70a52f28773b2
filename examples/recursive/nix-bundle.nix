# The Nix client bundle, built from the staged files by make-nix-bundle (see there and
# README.md). The output is a copy of `files` plus bin/<entry point> wrappers that run the
# bundled `nix` through the bundled dynamic loader and libraries. The wrappers name the
# output's own path, so the bundle refers only to itself: its closure is the bundle alone.
{ files      # store path of the staged files (nix-store --add)
, version    # the Nix version, for the name
, loader     # file name of the dynamic loader in lib/, e.g. ld-linux-x86-64.so.2
, entries    # space-separated entry points, e.g. "nix nix-build nix-store"
}:
let
  staged = builtins.storePath files;
in
derivation {
  name = "nix-bundle-${version}";
  system = builtins.currentSystem;
  builder = "${staged}/libexec/sh";
  inherit staged loader entries;
  args = [ "-euc" ''
    bb=$staged/libexec/busybox
    $bb mkdir -p $out/bin
    $bb cp -R $staged/lib $staged/libexec $out/
    for entry in $entries; do
      $bb cat > $out/bin/$entry <<WRAPPER
    #!$out/libexec/sh
    # $entry from the Nix client bundle: the program dispatches on argv[0]'s base name.
    exec $out/lib/$loader --inhibit-cache --library-path $out/lib --argv0 "\$0" $out/libexec/nix "\$@"
    WRAPPER
      $bb chmod 0555 $out/bin/$entry
    done
  '' ];
}

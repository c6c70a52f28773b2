# NOT nixpkgs: the packages nix/module.nix and ./nixos.nix refer to, as bare store path strings.
{
  nix = "/nix/store/00000000000000000000000000000000-nix-2.28.0";
  nixnest-daemon = "/nix/store/11111111111111111111111111111111-nixnest-daemon-0.1.0";
}

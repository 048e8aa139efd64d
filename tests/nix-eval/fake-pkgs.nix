# A stand-in for the parts of nixpkgs that services.shoal uses. Derivations are
# plain attribute sets that keep their inputs, so the evaluation test can
# inspect what the module would build; their store paths are derived from their
# contents, so a changed input gives a changed path, as with real derivations.
{ lib }:
let
  inherit (lib) types;

  hashOf = value: builtins.substring 0 32 (builtins.hashString "sha256" (builtins.toJSON value));

  fakeDerivation =
    name: attrs:
    attrs
    // {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/${hashOf [ name attrs ]}-${name}";
      drvPath = "/nix/store/${hashOf [ "drv" name attrs ]}-${name}.drv";
    };

  # A small TOML renderer, enough for the cluster and stack files: tables,
  # arrays of tables, scalars, arrays and inline tables inside arrays.
  toTOML =
    let
      isTable = v: builtins.isAttrs v && !(v ? outPath);
      isTableArray = v: builtins.isList v && v != [ ] && builtins.all isTable v;
      bareKey = k: builtins.match "[A-Za-z0-9_-]+" k != null;
      key = k: if bareKey k then k else builtins.toJSON k;
      scalar =
        v:
        if builtins.isBool v then
          lib.boolToString v
        else if builtins.isInt v || builtins.isFloat v then
          toString v
        else if builtins.isString v || builtins.isPath v || v ? outPath then
          builtins.toJSON (toString v)
        else if builtins.isList v then
          "[ ${lib.concatMapStringsSep ", " scalar v} ]"
        else if isTable v then
          "{ ${lib.concatStringsSep ", " (lib.mapAttrsToList (k: x: "${key k} = ${scalar x}") v)} }"
        else
          throw "fake formats.toml: cannot render ${builtins.typeOf v}";
      table =
        path: attrs:
        let
          plain = lib.filterAttrs (_: v: !(isTable v) && !(isTableArray v)) attrs;
          tables = lib.filterAttrs (_: isTable) attrs;
          tableArrays = lib.filterAttrs (_: isTableArray) attrs;
          header = lib.optionalString (path != [ ] && (plain != { } || tables == { } && tableArrays == { })) "[${lib.concatMapStringsSep "." key path}]\n";
        in
        header
        + lib.concatStrings (lib.mapAttrsToList (k: v: "${key k} = ${scalar v}\n") plain)
        + lib.concatStrings (lib.mapAttrsToList (k: v: table (path ++ [ k ]) v) tables)
        + lib.concatStrings (
          lib.mapAttrsToList (
            k: vs:
            lib.concatMapStrings (
              v:
              "[[${lib.concatMapStringsSep "." key (path ++ [ k ])}]]\n"
              + lib.concatStrings (lib.mapAttrsToList (k2: x: "${key k2} = ${scalar x}\n") v)
            ) vs
          ) tableArrays
        );
    in
    table [ ];
in
{
  inherit toTOML;

  formats.toml =
    { }:
    {
      # The type nixpkgs gives TOML settings: no null anywhere.
      type =
        let
          valueType =
            types.oneOf [
              types.bool
              types.int
              types.float
              types.str
              types.path
              (types.attrsOf valueType)
              (types.listOf valueType)
            ]
            // {
              description = "TOML value";
            };
        in
        valueType;

      generate =
        name: value:
        fakeDerivation name {
          format = "toml";
          inherit value;
          text = toTOML value;
        };
    };

  runCommand =
    name: env: buildCommand:
    fakeDerivation name {
      inherit env buildCommand;
    };

  callPackage =
    fn: args:
    fakeDerivation "shoal-from-source" {
      callPackageOf = toString fn;
    };

  writeText = name: text: fakeDerivation name { inherit text; };

  shoal = fakeDerivation "shoal-0.1.0" { };
  nftables = fakeDerivation "nftables" { };
  iptables = fakeDerivation "iptables" { };

  inherit lib;
  busybox = fakeDerivation "busybox" { };
  curl = fakeDerivation "curl" { };
  containerd = fakeDerivation "containerd" { };
  buildEnv = { name, paths, ... }: fakeDerivation name { inherit paths; };
  dockerTools.buildImage =
    { name, tag, ... }@args: fakeDerivation "docker-image-${name}.tar.gz" { inherit tag; config = args.config or { }; };
}

"""``edgedl keys generate``, ``edgedl sign`` and ``edgedl verify``: signed bundles from the shell.

Each command prints one line; a problem is one line on stderr and exit code 1 (the CLI root
turns :class:`~edgedl.errors.EdgeDLError` into that).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def keys() -> None:
    """Make the Ed25519 key pairs that sign bundles."""


@keys.command("generate")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to write NAME.key and NAME.pub into.",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair of that name.")
def generate(name: str, directory: Path, force: bool) -> None:
    """Write a new key pair: NAME.key (private, mode 0600) and NAME.pub (public)."""
    from .signing import generate_keys, key_id, load_public_key

    private_path, public_path = generate_keys(name, directory, force=force)
    kid = key_id(load_public_key(public_path))
    click.echo(
        f"wrote {private_path} (private: keep it secret) and {public_path} "
        f"(give it to the agents); key id {kid}"
    )


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The private key (NAME.key from 'edgedl keys generate').",
)
def sign(bundle: Path, key_path: Path) -> None:
    """Sign a bundle in place (directory or .tar): adds signature.json."""
    from .signing import sign_bundle

    signed = sign_bundle(bundle, key_path)
    click.echo(f"signed {signed.name} {signed.version} ({bundle}) with key {signed.key_id}")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_paths",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A trusted public key (NAME.pub); repeat for several.",
)
def verify(bundle: Path, key_paths: tuple[Path, ...]) -> None:
    """Check that a trusted key signed a bundle and its model file is intact."""
    from .bundle import Bundle
    from .signing import key_id, load_public_key, verify_bundle

    loaded = {path: load_public_key(path) for path in key_paths}
    named = {key_id(key): path for path, key in loaded.items()}
    opened = Bundle.open(bundle, verify=False)
    kid = verify_bundle(opened, loaded.values())
    m = opened.manifest
    click.echo(f"{m.name} {m.version}: signed by key {kid} ({named[kid]}), {m.model_file} verified")

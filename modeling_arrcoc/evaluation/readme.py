"""The generated blocks of the repository's markdown pages (README.md, docs/results.md, docs/demo_model.md).

A block is the text between

    <!-- BEGIN generated:NAME (the command that writes it) -->
    <!-- END generated:NAME -->

and is only ever written by a repo command from what another repo command produced (tools/render_readme.py, run
by `make readme`, and tools/probe_report.py), so no number in those pages is typed by hand. Both tools fill their
blocks through `fill_blocks`; the rendering of each block's body stays with the tool that owns its source.
"""

import re
from pathlib import Path

BLOCK = re.compile(r"<!-- BEGIN generated:([\w-]+)[^>]*-->\n.*?<!-- END generated:\1 -->", re.S)


def block_names(text: str) -> list:
    """Names of the generated blocks in `text`, in order."""
    return [match.group(1) for match in BLOCK.finditer(text)]


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the body of its block `name` replaced by `body` (the markers kept); ValueError without one."""
    pattern = re.compile(rf"(<!-- BEGIN generated:{name}[^>]*-->\n).*?(<!-- END generated:{name} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no generated block named {name!r}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def fill_blocks(path, blocks: dict) -> None:
    """Write each `name: body` of `blocks` into the block of that name in the markdown file `path`; a block the file
    does not hold is an error naming the file, so a page and its renderer cannot drift apart silently."""
    path = Path(path)
    text = path.read_text()
    for name, body in blocks.items():
        try:
            text = replace_block(text, name, body)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    path.write_text(text)


__all__ = ["block_names", "fill_blocks", "replace_block"]

"""python -m studio inspect SOURCE [SOURCE ...] — headers only. With several sources, exit status 1 when one does not
line up with the first (as ``diff``: 0 the same architecture, 1 differences, 2 an error)."""

from __future__ import annotations

from ..cli import print_json
from ..describe import compare, describe, human_bytes, human_count
from ..layout import detect_layout
from ..layout.inferred import block_map
from ..sources import open_source
from ..zoo import expand_zoo_refs


def add_arguments(p):
    p.add_argument("sources", nargs="+", help="files, folders, hub ids (org/name[@revision]) or the demo zoo's models: "
                   "zoo:FAMILY (its base and experts), zoo:FAMILY/base, zoo:FAMILY/TASK")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--blocks", action="store_true",
                   help="also print each model's block map: group → tensors → parameters → example keys")


def run(args) -> int:
    sources = [open_source(s) for s in expand_zoo_refs(args.sources)]
    infos = [describe(s) for s in sources]
    cmp = compare(sources) if len(sources) > 1 else None
    status = 1 if cmp and not all(e["compatible"] for e in cmp["against"]) else 0
    if args.blocks:
        for info, src in zip(infos, sources):
            info["blocks"] = [vars(row) for row in block_map(detect_layout(src), src)]
    if args.json:
        print_json({"models": infos, "comparison": cmp})
        return status
    for i in infos:
        print(f"{i['ref']}")
        family = f" · family {i['family']}" if i["family"] else ""
        print(f"  kind {i['kind']} · architecture {i['architecture']}{family} · {human_count(i['parameters'])} "
              f"parameters · {i['tensors']} tensors · {human_bytes(i['bytes'])}")
        print(f"  dtypes {', '.join(f'{k}×{v}' for k, v in i['dtypes'].items())} · layout {i['layout']} "
              f"({i['groups']} groups)" + (f" · vocab {i['vocab_size']}" if "vocab_size" in i else ""))
        if "blocks" in i:
            print(f"  {i['layout_description']}")
        for row in i.get("blocks", []):
            print(f"    {row['group']:<6} {row['label'][:36]:<36} {row['tensors']:>6} tensors "
                  f"{human_count(row['params']):>8} params  {', '.join(row['examples'])}")
    if cmp:
        for e in cmp["against"]:
            verdict = "compatible" if e["compatible"] else "NOT compatible"
            print(f"{e['ref']} vs {cmp['reference']}: {verdict}")
            for label in ("missing", "extra"):
                if e[label]:
                    print(f"  {len(e[label])} {label} key(s), e.g. {', '.join(e[label][:3])}")
            for m in e["shape_mismatches"][:10]:
                print(f"  shape {m['key']}: expected {m['expected']}, got {m['got']}")
            if "vocab_size" in e:
                print(f"  vocab_size {e['vocab_size']['got']} vs {e['vocab_size']['expected']}")
    return status

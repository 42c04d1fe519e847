"""Extract one version's openAPIV3Schema from a CRD file in a git checkout into a compact JSON file.

Descriptions and the ``status`` subtree (written by the operator, never by us) are dropped to keep the
vendored files small; everything that validates is kept as it is. See README.md for the exact commands.

    python extract_crd_schema.py REPO REV PATH CRD_NAME VERSION OUT.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import yaml


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(repo: str, rev: str, path: str, crd_name: str, version: str, out: str) -> None:
    text = subprocess.run(
        ["git", "-C", repo, "show", f"{rev}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    for doc in yaml.safe_load_all(text):
        if not doc or doc.get("kind") != "CustomResourceDefinition" or doc["metadata"]["name"] != crd_name:
            continue
        for v in doc["spec"]["versions"]:
            if v["name"] == version:
                schema = strip(v["schema"]["openAPIV3Schema"])
                schema["properties"].pop("status", None)
                with open(out, "w") as f:
                    json.dump(schema, f, separators=(",", ":"), sort_keys=True)
                    f.write("\n")
                return
    raise SystemExit(f"{crd_name} {version} not found in {path}@{rev}")


if __name__ == "__main__":
    main(*sys.argv[1:])

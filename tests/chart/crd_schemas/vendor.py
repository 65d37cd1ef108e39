"""Vendor the OpenAPI v3 schemas of the custom resources the chart and k8s/ use.

Each output file, ``<group>/<kind lowercased>-<version>.json``, is exactly
``spec.versions[<version>].schema.openAPIV3Schema`` of the operator's released CRD (after the
kustomize patches its release applies), as JSON with sorted keys and no indentation.

Two ways to run it (from the repository root):

    # one CRD file (or '-' for stdin), e.g. piped from `git show <tag>:<path>`
    python tests/chart/crd_schemas/vendor.py CRD.yaml --group argoproj.io --kind Rollout

    # everything in SOURCES below, read from local clones of the operators' repositories,
    # then SOURCES.md is rewritten from the same table
    python tests/chart/crd_schemas/vendor.py --all --git-dir-template '/src/{owner}/{name}/.git'

It never touches the network: fetch or clone the repositories yourself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Source:
    """Where one vendored schema comes from: a CRD file at a released tag of the operator's repository."""

    repo: str  # owner/name on GitHub
    tag: str
    operator: str  # the operator release the tag is
    path: str  # CRD file in the repository (may hold several documents)
    group: str
    kind: str
    version: str
    patch: str | None = None  # kustomize JSON6902 patch the release build applies to this CRD

    def out_path(self, root: Path = HERE) -> Path:
        return output_path(root, self.group, self.kind, self.version)


SOURCES: tuple[Source, ...] = (
    Source("argoproj/argo-rollouts", "v1.9.1", "Argo Rollouts v1.9.1", "manifests/crds/rollout-crd.yaml",
           "argoproj.io", "Rollout", "v1alpha1"),
    Source("argoproj/argo-rollouts", "v1.9.1", "Argo Rollouts v1.9.1", "manifests/crds/analysis-template-crd.yaml",
           "argoproj.io", "AnalysisTemplate", "v1alpha1"),
    Source("kedacore/keda", "v2.20.2", "KEDA v2.20.2", "config/crd/bases/keda.sh_scaledobjects.yaml",
           "keda.sh", "ScaledObject", "v1alpha1", patch="config/crd/patches/scaledobject_patch.yaml"),
    Source("kedacore/keda", "v2.20.2", "KEDA v2.20.2", "config/crd/bases/keda.sh_triggerauthentications.yaml",
           "keda.sh", "TriggerAuthentication", "v1alpha1"),
    *(Source("prometheus-operator/prometheus-operator", "v0.93.0", "prometheus-operator v0.93.0 (kube-prometheus-stack 88.3.0)",
             f"example/prometheus-operator-crd-full/monitoring.coreos.com_{plural}.yaml", "monitoring.coreos.com", kind, "v1")
      for plural, kind in (("servicemonitors", "ServiceMonitor"), ("podmonitors", "PodMonitor"),
                           ("prometheusrules", "PrometheusRule"))),
    # Strimzi 1.0.0 removed v1beta2 from its CRDs: 1.x serves kafka.strimzi.io/v1 only.
    *(Source("strimzi/strimzi-kafka-operator", "1.2.0", "Strimzi 1.2.0", f"install/cluster-operator/{file}",
             "kafka.strimzi.io", kind, "v1")
      for file, kind in (("040-Crd-kafka.yaml", "Kafka"), ("045-Crd-kafkanodepool.yaml", "KafkaNodePool"),
                         ("043-Crd-kafkatopic.yaml", "KafkaTopic"), ("044-Crd-kafkauser.yaml", "KafkaUser"))),
    Source("Altinity/clickhouse-operator", "release-0.25.6", "Altinity clickhouse-operator 0.25.6",
           "deploy/operator/clickhouse-operator-install-bundle.yaml", "clickhouse.altinity.com", "ClickHouseInstallation", "v1"),
    Source("cloudnative-pg/cloudnative-pg", "v1.30.0", "CloudNativePG 1.30.0", "releases/cnpg-1.30.0.yaml",
           "postgresql.cnpg.io", "Cluster", "v1"),
    Source("minio/operator", "v7.1.1", "MinIO Operator v7.1.1", "resources/base/crds/minio.min.io_tenants.yaml",
           "minio.min.io", "Tenant", "v2"),
)


class VendorError(Exception):
    pass


def output_path(root: Path, group: str, kind: str, version: str) -> Path:
    return root / group / f"{kind.lower()}-{version}.json"


def load_yaml_documents(text: str) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CNPG bundle is 2 MB: the C loader is ~10x faster
    return [d for d in yaml.load_all(text, Loader=loader) if d]


def apply_json6902(doc: dict, ops: list[dict]) -> None:
    """Apply the 'add'/'replace' operations of a kustomize JSON6902 patch in place (all the releases use)."""
    for op in ops:
        if op.get("op") not in ("add", "replace"):
            raise VendorError(f"patch operation {op.get('op')!r} is not supported (only add and replace)")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            if op["op"] == "add":
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[int(last)] = op["value"]
        else:
            if op["op"] == "replace" and last not in node:
                raise VendorError(f"patch replaces {op['path']}, which does not exist")
            node[last] = op["value"]


def extract_schema(documents: list[dict], group: str, kind: str, version: str) -> dict:
    """The openAPIV3Schema of (group, kind, version) from the CustomResourceDefinitions among ``documents``."""
    crds = [d for d in documents if d.get("kind") == "CustomResourceDefinition"
            and d.get("spec", {}).get("group") == group and d["spec"].get("names", {}).get("kind") == kind]
    if len(crds) != 1:
        raise VendorError(f"expected one CustomResourceDefinition for {group} {kind}, found {len(crds)}")
    versions = {v["name"]: v for v in crds[0]["spec"]["versions"]}
    if version not in versions:
        raise VendorError(f"{group} {kind}: no version {version} in the CRD (it has {', '.join(versions)})")
    entry = versions[version]
    if not entry.get("served", False):
        raise VendorError(f"{group} {kind} {version} is not served by this CRD")
    schema = entry.get("schema", {}).get("openAPIV3Schema")
    if not isinstance(schema, dict):
        raise VendorError(f"{group} {kind} {version} has no schema.openAPIV3Schema")
    return schema


def dump_schema(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n"


def write_schema(root: Path, group: str, kind: str, version: str, schema: dict) -> Path:
    out = output_path(root, group, kind, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_schema(schema))
    return out


def git_show(git_dir: str, rev: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{rev}:{path}"],
                          check=True, capture_output=True, text=True).stdout


def git_commit(git_dir: str, rev: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", f"{rev}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


def vendor_all(git_dir_template: str, root: Path = HERE) -> list[tuple[Source, str, Path]]:
    done = []
    for src in SOURCES:
        owner, name = src.repo.split("/")
        git_dir = git_dir_template.format(owner=owner, name=name)
        docs = load_yaml_documents(git_show(git_dir, src.tag, src.path))
        if src.patch:
            patched = [d for d in docs if d.get("kind") == "CustomResourceDefinition" and d["spec"]["names"]["kind"] == src.kind]
            apply_json6902(patched[0], yaml.safe_load(git_show(git_dir, src.tag, src.patch)))
        schema = extract_schema(docs, src.group, src.kind, src.version)
        done.append((src, git_commit(git_dir, src.tag), write_schema(root, src.group, src.kind, src.version, schema)))
    return done


def sources_markdown(done: list[tuple[Source, str, Path]], root: Path = HERE) -> str:
    lines = [
        "# Vendored CRD schemas",
        "",
        "Each file is `spec.versions[].schema.openAPIV3Schema` of one served version of the operator's released CRD,",
        "as JSON with sorted keys and no indentation. Generated with",
        "`python tests/chart/crd_schemas/vendor.py --all --git-dir-template '<clone of {owner}/{name}>'`,",
        "which also rewrites this file; `tests/chart/validation.py` validates custom resources against them.",
        "The operator versions here are the ones `k8s/README.md` installs.",
        "",
        "| file | bytes | operator | repository | tag | commit | path |",
        "| --- | ---: | --- | --- | --- | --- | --- |",
    ]
    for src, commit, out in done:
        path = f"`{src.path}`" + (f" + kustomize patch `{src.patch}`" if src.patch else "")
        lines.append(f"| `{out.relative_to(root).as_posix()}` | {out.stat().st_size} | {src.operator} | "
                     f"github.com/{src.repo} | `{src.tag}` | `{commit}` | {path} |")
    lines += [
        "",
        "Notes:",
        "- Strimzi 1.0.0 removed `kafka.strimzi.io/v1beta2` (and `v1alpha1`) from its CRDs; Strimzi 1.x serves `v1` only,",
        "  so the Strimzi schemas (and `k8s/kafka.yaml`) are `v1`.",
        "- KEDA's release manifest (`keda-2.20.2.yaml`) is a kustomize build that patches the ScaledObject CRD",
        "  (stabilizationWindowSeconds bounds); the same patch is applied here.",
        "- kube-prometheus-stack 88.3.0 ships prometheus-operator v0.93.0 with byte-for-byte the same CRD specs.",
        "",
        "sha256 of each file:",
        "",
        "```",
    ]
    for _src, _commit, out in done:
        lines.append(f"{hashlib.sha256(out.read_bytes()).hexdigest()}  {out.relative_to(root).as_posix()}")
    lines += ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("crd", nargs="?", help="CRD YAML file ('-' for stdin)")
    ap.add_argument("--group")
    ap.add_argument("--kind")
    ap.add_argument("--version", help="CRD version (default: every served version)")
    ap.add_argument("--patch", help="kustomize JSON6902 patch (YAML list of add/replace ops) to apply first")
    ap.add_argument("--out", type=Path, default=HERE, help="output root (default: this directory)")
    ap.add_argument("--all", action="store_true", help="vendor every entry of SOURCES and rewrite SOURCES.md")
    ap.add_argument("--git-dir-template", default="{owner}/{name}/.git",
                    help="git dir of each repository, with {owner} and {name} (used with --all)")
    args = ap.parse_args(argv)
    try:
        if args.all:
            done = vendor_all(args.git_dir_template, args.out)
            (args.out / "SOURCES.md").write_text(sources_markdown(done, args.out))
            for _src, _commit, out in done:
                print(f"{out.stat().st_size:>8}  {out}")
            return 0
        if not (args.crd and args.group and args.kind):
            ap.error("give a CRD file with --group and --kind, or --all")
        docs = load_yaml_documents(sys.stdin.read() if args.crd == "-" else Path(args.crd).read_text())
        crd = [d for d in docs if d.get("kind") == "CustomResourceDefinition" and d.get("spec", {}).get("group") == args.group
               and d["spec"].get("names", {}).get("kind") == args.kind]
        if args.patch and crd:
            apply_json6902(crd[0], yaml.safe_load(Path(args.patch).read_text()))
        versions = [args.version] if args.version else [v["name"] for c in crd[:1] for v in c["spec"]["versions"] if v.get("served")]
        if not versions:
            raise VendorError(f"no served version of {args.group} {args.kind} in {args.crd}")
        for version in versions:
            out = write_schema(args.out, args.group, args.kind, version, extract_schema(docs, args.group, args.kind, version))
            print(f"{out.stat().st_size:>8}  {out}")
        return 0
    except (VendorError, subprocess.CalledProcessError, OSError, yaml.YAMLError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"vendor.py: {exc} {detail}".strip(), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Validation of the HealthDCAT-AP export with pySHACL against the official shapes kept in `shapes/`.

The shape set is the HealthData@EU validator's NON_PUBLIC set (HealthDCAT-AP Release 8: graph guard, range,
non-public shapes, recommended) together with the SEMIC DCAT-AP 3.0.1 shapes it imports (core, range,
recommended, controlled vocabularies, deprecated URIs). Source, pinned versions and licence: shapes/README.md.

Validation runs without inference (`inference="none"`): every class a shape asks for must be stated in the
document. A document *conforms* when no result has severity Violation; Warnings (recommended properties
not given) are reported but do not make it fail, as on the hosted validator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

SHAPE_FILES = (
    "dcat-ap-3.0.1/shapes.ttl",
    "dcat-ap-3.0.1/range.ttl",
    "dcat-ap-3.0.1/shapes_recommended.ttl",
    "dcat-ap-3.0.1/mdr-vocabularies.shape.ttl",
    "dcat-ap-3.0.1/deprecateduris.ttl",
    "healthdcat-ap-r8/graph-guard.ttl",
    "healthdcat-ap-r8/range.ttl",
    "healthdcat-ap-r8/non-public-shapes.ttl",
    "healthdcat-ap-r8/non-public-shapes_recommended.ttl",
)
SH = "http://www.w3.org/ns/shacl#"


@dataclass
class Report:
    conforms: bool
    violations: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        kinds = sorted({(v["focus"], v["path"], v["constraint"]) for v in self.violations})
        head = "conforms" if self.conforms else f"{len(self.violations)} violations"
        return f"{head}, {len(self.warnings)} warnings" + "".join(f"\n  {f} {p} ({c})" for f, p, c in kinds)


@cache
def shapes_graph():
    import rdflib

    g = rdflib.Graph()
    root = resources.files("eds_network.catalogue").joinpath("shapes")
    for name in SHAPE_FILES:
        g.parse(data=root.joinpath(name).read_text(encoding="utf-8"), format="turtle", publicID=name)
    _lift_pathless_property_shapes(g)
    return g


def _lift_pathless_property_shapes(g) -> int:
    """The NON_PUBLIC Dataset shape states its hasStructuredData -> hasVariables rule as an `sh:property` without
    `sh:path` (a node-level `sh:or`). SHACL requires a path there and pySHACL refuses the shape; the meaning is a
    node constraint on the same targets, so it is moved onto a node shape with the parent's targets. The files
    stay verbatim; this is the only adaptation (see shapes/README.md)."""
    import rdflib

    sh = rdflib.Namespace(SH)
    lifted = 0
    for parent, prop in list(g.subject_objects(sh.property)):
        if g.value(prop, sh.path) is not None:
            continue
        g.remove((parent, sh.property, prop))
        g.add((prop, rdflib.RDF.type, sh.NodeShape))
        for target in g.objects(parent, sh.targetClass):
            g.add((prop, sh.targetClass, target))
        lifted += 1
    return lifted


def _short(g, term) -> str:
    if term is None:
        return ""
    try:
        return term.n3(g.namespace_manager)
    except Exception:  # noqa: BLE001 - a blank node or path: its plain text is enough
        return str(term)


def validate(doc: dict | str) -> Report:
    """Validate one JSON-LD document (dict or text) against the whole shape set."""
    import pyshacl
    import rdflib

    data = rdflib.Graph()
    data.parse(data=doc if isinstance(doc, str) else json.dumps(doc), format="json-ld")
    _, results, _ = pyshacl.validate(
        data, shacl_graph=shapes_graph(), inference="none", advanced=True, allow_warnings=True
    )
    sh = rdflib.Namespace(SH)
    violations, warnings = [], []
    # top-level results only: a nested sh:detail explains its parent, whose severity is the one that counts
    for r in results.objects(None, sh.result):
        item = {
            "focus": _short(results, results.value(r, sh.focusNode)),
            "path": _short(results, results.value(r, sh.resultPath)),
            "constraint": _short(results, results.value(r, sh.sourceConstraintComponent)).replace("sh:", ""),
            "message": str(results.value(r, sh.resultMessage) or ""),
        }
        (violations if results.value(r, sh.resultSeverity) == sh.Violation else warnings).append(item)
    return Report(conforms=not violations, violations=violations, warnings=warnings)

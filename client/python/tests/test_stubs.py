"""The type stubs (kvtier/_kvtier.pyi) name exactly what the extension has."""

import ast
import os

import kvtier
from kvtier import _kvtier


def stub_names():
    path = os.path.join(os.path.dirname(kvtier.__file__), "_kvtier.pyi")
    tree = ast.parse(open(path).read())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            top.add(node.name)
            members[node.name] = {n.name for n in node.body
                                  if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")}
        elif isinstance(node, ast.FunctionDef):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign) and node.target.id.isupper():
            top.add(node.target.id)
    return top, members


def test_stubs_match_the_extension():
    top, members = stub_names()
    runtime = {n for n in dir(_kvtier) if not n.startswith("__")}
    assert top == runtime
    for cls, names in members.items():
        have = {n for n in dir(getattr(_kvtier, cls)) if not n.startswith("__")}
        assert names == have, cls

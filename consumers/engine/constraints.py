"""Sweep constraints such as `fast < slow`: parsed into a small safe tree, never `eval`-ed."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Collection, Mapping
from typing import cast

MAX_LENGTH = 200

_COMPARE: dict[type, Callable[[float, float], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ARITH: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}


Evaluator = Callable[[Mapping[str, float]], float | bool]


class ConstraintError(ValueError):
    """The constraint is not a comparison of parameters, numbers and + - * / %, joined by and/or/not."""


class Constraint:
    """A parsed constraint; call it with a combination of parameters to test it."""

    def __init__(self, text: str, names: Collection[str]) -> None:
        if len(text) > MAX_LENGTH:
            raise ConstraintError(f"constraint is longer than {MAX_LENGTH} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            raise ConstraintError(f"cannot parse constraint {text!r}: {e.msg}") from None
        self.text = text
        self._names = set(names)
        self._check(tree.body)
        self._test = self._compile(tree.body)

    def _check(self, node: ast.AST) -> None:
        """Accept only the node types `_compile` knows; everything else (calls, attributes...) fails."""
        match node:
            case ast.BoolOp(values=values):
                for v in values:
                    self._check(v)
            case ast.UnaryOp(op=ast.Not() | ast.USub() | ast.UAdd(), operand=operand):
                self._check(operand)
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _ARITH:
                self._check(left)
                self._check(right)
            case ast.Compare(left=left, ops=ops, comparators=comps) if all(type(o) in _COMPARE for o in ops):
                self._check(left)
                for c in comps:
                    self._check(c)
            case ast.Name(id=name):
                if name not in self._names:
                    known = ", ".join(sorted(self._names)) or "none"
                    raise ConstraintError(f"constraint names unknown parameter {name!r} (parameters: {known})")
            case ast.Constant(value=value) if isinstance(value, int | float) and not isinstance(value, bool):
                pass
            case _:
                raise ConstraintError(
                    f"constraint may only compare parameters and numbers with + - * / %, and/or/not; "
                    f"{ast.unparse(node)!r} is not allowed"
                )

    def __call__(self, params: Mapping[str, float]) -> bool:
        """True if the combination is admissible; arithmetic errors (x / 0) make it inadmissible."""
        try:
            return bool(self._test(params))
        except (ZeroDivisionError, OverflowError):
            return False

    def _compile(self, node: ast.AST) -> Evaluator:
        """The tree as nested closures, built once: a sweep tests every combination of its grid
        (up to tens of thousands), so the tree is not walked again for each."""
        match node:
            case ast.BoolOp(op=ast.And(), values=values):
                parts = [self._compile(v) for v in values]
                return lambda p: all(part(p) for part in parts)
            case ast.BoolOp(values=values):
                parts = [self._compile(v) for v in values]
                return lambda p: any(part(p) for part in parts)
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                inner = self._compile(operand)
                return lambda p: not inner(p)
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                inner = self._compile(operand)
                return lambda p: -inner(p)
            case ast.UnaryOp(operand=operand):
                return self._compile(operand)
            case ast.BinOp(left=left, op=op, right=right):
                arith, lhs, rhs = _ARITH[type(op)], self._compile(left), self._compile(right)
                return lambda p: arith(lhs(p), rhs(p))
            case ast.Compare(left=left, ops=ops, comparators=comps):
                terms = [self._compile(left), *(self._compile(c) for c in comps)]
                tests = [_COMPARE[type(o)] for o in ops]
                if len(tests) == 1:
                    test, lhs, rhs = tests[0], terms[0], terms[1]
                    return lambda p: test(lhs(p), rhs(p))
                return lambda p: _chain(tests, terms, p)
            case ast.Name(id=name):
                return lambda p: p[name]
            case ast.Constant(value=value):
                constant = cast("float | bool", value)
                return lambda p: constant
        raise ConstraintError(f"unexpected node {ast.dump(node)}")  # unreachable after _check


def _chain(tests: list[Callable[[float, float], bool]], terms: list[Evaluator], p: Mapping[str, float]) -> bool:
    """`a < b <= c`: each comparison on the values of its neighbours, each term evaluated once."""
    lhs = terms[0](p)
    for test, term in zip(tests, terms[1:], strict=True):
        rhs = term(p)
        if not test(lhs, rhs):
            return False
        lhs = rhs
    return True

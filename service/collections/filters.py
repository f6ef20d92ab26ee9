"""Metadata filters: JSON in the style of MongoDB, compiled to parameterised SQL from a whitelist.

    {"genre": "jazz"}                               implicit $eq
    {"year": {"$gte": 1990, "$lt": 2000}}           several operators on one field: all must hold
    {"$or": [{"a.b": {"$in": [1, 2]}}, {"c": {"$exists": false}}]}
    {"$not": {"draft": true}}

Keys are dot paths into the metadata object ("a.b" is metadata->'a'->'b'). Field names and values
always travel as bind parameters; the only SQL text produced is fixed by this module. Equality
and $in on scalars compile to jsonb containment (@>), which the collection's GIN index serves.

Semantics: $ne and $nin also match documents where the field is missing; $gt/$gte/$lt/$lte compare
numbers with numbers and strings with strings (by code point), and never match other types. Every
condition is true or false, never NULL, so $not and $ne negate exactly.

Size: at most MAX_CONDITIONS conditions in all, counting every $in/$nin value and every filter
object (so a filter's SQL and its parameter count stay bounded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from service.errors import InvalidRequest

COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FIELD_OPERATORS = {"$eq", "$ne", "$in", "$nin", "$exists", *COMPARISONS}
LOGICAL_OPERATORS = {"$and", "$or", "$not"}
MAX_DEPTH = 16
MAX_LIST = 1000
MAX_CONDITIONS = 1000
MAX_PATH_SEGMENTS = 64
MAX_VALUE_DEPTH = 64


class FilterError(InvalidRequest):
    code = "invalid_filter"
    title = "The filter is invalid"


# Parameter n (from 1) of a condition is written \x00n\x00 until the condition is bound into a
# query. Safe as a marker: the text around it is fixed by this module (names and values travel
# as parameters); a parameter may be used more than once.
_PARAM = re.compile("\x00([0-9]+)\x00")


def _param(n: int) -> str:
    return f"\x00{n}\x00"


@dataclass(frozen=True)
class Condition:
    """A SQL condition and its parameters, numbered only where it is placed in a query: `bind`
    appends its parameters to the query's own and returns its SQL numbered to match, so no
    caller has to know how many parameters come before it."""

    template: str  # SQL with _param(n) where parameter n goes
    params: list[Any] = field(default_factory=list)

    def bind(self, params: list[Any]) -> str:
        """This condition's SQL, its parameters appended to `params` (the query's, so far)."""
        offset = len(params)
        params.extend(self.params)
        return _PARAM.sub(lambda m: f"${offset + int(m.group(1))}", self.template)


def ids_condition(ids: list[str]) -> Condition:
    """The rows with one of these ids (each id matches its row once, however often it is given)."""
    return Condition(f"id = ANY({_param(1)}::text[])", [ids])


class _Compiler:
    def __init__(self, column: str) -> None:
        self.column = column
        self.params: list[Any] = []
        self.clauses = 0

    def param(self, value: Any, cast: str) -> str:
        self.params.append(value)
        return f"{_param(len(self.params))}::{cast}"

    def fail(self, where: str, message: str) -> InvalidRequest:
        return FilterError.field(where, message, f"{where}: {message}")

    # -- structure --------------------------------------------------------------------------------

    def spend(self, where: str, count: int = 1) -> None:
        self.clauses += count
        if self.clauses > MAX_CONDITIONS:
            raise self.fail(where, f"the filter has more than {MAX_CONDITIONS} conditions")

    def node(self, value: Any, where: str, depth: int) -> str:
        self.spend(where)
        if depth > MAX_DEPTH:
            raise self.fail(where, f"nested more than {MAX_DEPTH} levels deep")
        if not isinstance(value, dict):
            raise self.fail(where, "must be an object of field conditions and $and/$or/$not")
        if not value:
            return "TRUE"
        parts = []
        for key, condition in value.items():
            here = f"{where}.{key}"
            if key.startswith("$"):
                parts.append(self.logical(key, condition, here, depth))
            else:
                parts.append(self.field(key, condition, here))
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def logical(self, operator: str, value: Any, where: str, depth: int) -> str:
        if operator not in LOGICAL_OPERATORS:
            allowed = ", ".join(sorted(LOGICAL_OPERATORS))
            hint = (
                " (field operators go inside a field: {field: {op: value}})"
                if operator in FIELD_OPERATORS
                else ""
            )
            raise self.fail(where, f"unknown operator {operator}; allowed here: {allowed}{hint}")
        if operator == "$not":
            return f"(NOT {self.node(value, where, depth + 1)})"
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"{operator} takes a non-empty list of filters")
        joined = f" {operator[1:].upper()} ".join(
            self.node(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)
        )
        return f"({joined})"

    # -- field conditions -------------------------------------------------------------------------

    def field(self, key: str, condition: Any, where: str) -> str:
        path = key.split(".")
        if any(not part for part in path):
            raise self.fail(where, "field path has an empty segment")
        if len(path) > MAX_PATH_SEGMENTS:
            raise self.fail(where, f"field path has more than {MAX_PATH_SEGMENTS} segments")
        if isinstance(condition, dict) and condition:
            bare = sorted(k for k in condition if f"${k}" in FIELD_OPERATORS)
            if bare and all(f"${k}" in FIELD_OPERATORS for k in condition):
                # {"year": {"gte": 2022}} would compare the field with the object {"gte": 2022}
                # and quietly match nothing: almost surely a forgotten '$'.
                raise self.fail(
                    where,
                    f"'{bare[0]}' is not an operator; did you mean '${bare[0]}'? "
                    f'(to match an object equal to this one, write {{"$eq": {{...}}}})',
                )
        if isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
            parts = [self.operator(path, op, value, f"{where}.{op}") for op, value in condition.items()]
            return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
        if isinstance(condition, dict) and any(k.startswith("$") for k in condition):
            raise self.fail(where, "mixes operators ($...) with plain keys")
        return self.operator(path, "$eq", condition, where)

    def operator(self, path: list[str], operator: str, value: Any, where: str) -> str:
        self.spend(where)
        if operator not in FIELD_OPERATORS:
            raise self.fail(
                where, f"unknown operator {operator}; allowed: {', '.join(sorted(FIELD_OPERATORS))}"
            )
        if operator == "$eq":
            return self.equals(path, value)
        if operator == "$ne":
            return f"(NOT {self.equals(path, value)})"
        if operator in ("$in", "$nin"):
            if not isinstance(value, list) or not value:
                raise self.fail(where, f"{operator} takes a non-empty list of values")
            if len(value) > MAX_LIST:
                raise self.fail(where, f"{operator} takes at most {MAX_LIST} values")
            self.spend(where, len(value))
            any_of = "(" + " OR ".join(self.equals(path, v) for v in value) + ")"
            return any_of if operator == "$in" else f"(NOT {any_of})"
        if operator == "$exists":
            if not isinstance(value, bool):
                raise self.fail(where, "$exists takes true or false")
            test = "IS NOT NULL" if value else "IS NULL"
            return f"({self.column} #> {self.param(path, 'text[]')} {test})"
        # $gt $gte $lt $lte
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(where, f"{operator} takes a number or a string")
        path_param = self.param(path, "text[]")
        if isinstance(value, str):
            text = f'({self.column} #>> {path_param}) COLLATE "C"'
            compared = f"{text} {COMPARISONS[operator]} {self.param(value, 'text')}"
            kind = "string"
        else:
            compared = (
                f"{self.column} #> {path_param} {COMPARISONS[operator]} {self.param(_json(value), 'jsonb')}"
            )
            kind = "number"
        # A missing field makes #> NULL: coalesce keeps the condition two-valued for NOT.
        return f"coalesce(jsonb_typeof({self.column} #> {path_param}) = '{kind}' AND {compared}, false)"

    def equals(self, path: list[str], value: Any) -> str:
        if _deeper_than(value, MAX_VALUE_DEPTH):
            raise self.fail(".".join(path), f"the value nests more than {MAX_VALUE_DEPTH} levels deep")
        if isinstance(value, (dict, list)):
            # Objects and arrays compare whole (containment would also match supersets).
            field = f"{self.column} #> {self.param(path, 'text[]')}"
            return f"coalesce({field} = {self.param(_json(value), 'jsonb')}, false)"
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise self.fail(".".join(path), "unsupported value")
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        return f"({self.column} @> {self.param(_json(nested), 'jsonb')})"


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than limit; stops descending at limit (bounded recursion)."""
    if not isinstance(value, (dict, list)):
        return False
    if limit == 0:
        return True
    items = value.values() if isinstance(value, dict) else value
    return any(_deeper_than(item, limit - 1) for item in items)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def compile_filter(spec: Any, *, column: str = "metadata") -> Condition:
    """Compile a filter; raises FilterError (400) naming the offending operator's location."""
    compiler = _Compiler(column)
    sql = compiler.node(spec, "filter", 0)
    return Condition(sql, compiler.params)

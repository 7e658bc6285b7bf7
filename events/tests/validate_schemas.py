"""Validates JSON documents against the exported envelope schemas with Python's
jsonschema package (Draft 7, format checking on), for schemas_validate_in_python.rs.

Usage: python3 validate_schemas.py DIR, where DIR holds the schema files and
cases.json, a list of {"schema": "<EventType>.json", "instance": {...}}.

Prints one line per case, in order: "<index> valid", "<index> invalid <why>", or
"<index> error <why>" when validation itself broke (a schema that is not valid
Draft 7, a $ref that resolves nowhere): an error is never a correct rejection.
Exits 3 if the jsonschema package is missing.
"""

import json
import os
import sys

try:
    import jsonschema
except ImportError:
    print("python3 (%s) has no jsonschema package: python3 -m pip install jsonschema" % sys.executable, file=sys.stderr)
    sys.exit(3)


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def main(directory):
    with open(os.path.join(directory, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    checker = jsonschema.FormatChecker()
    validators = {}
    for index, case in enumerate(cases):
        name = case["schema"]
        if name not in validators:
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    schema = json.load(f)
                jsonschema.Draft7Validator.check_schema(schema)
                validators[name] = jsonschema.Draft7Validator(schema, format_checker=checker)
            except Exception as e:  # reported per case below, as the schema's fault
                validators[name] = "%s: %s" % (type(e).__name__, one_line(e))
        validator = validators[name]
        if isinstance(validator, str):
            print("%d error %s %s" % (index, name, validator))
            continue
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(case["instance"]))
        except Exception as e:  # e.g. PointerToNowhere for an unresolvable $ref
            print("%d error %s: %s" % (index, type(e).__name__, one_line(e)))
            continue
        if error is None:
            print("%d valid" % index)
        else:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            print("%d invalid at %s: %s" % (index, where, one_line(error.message)))


if __name__ == "__main__":
    main(sys.argv[1])

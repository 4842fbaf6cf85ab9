#!/usr/bin/env python3
"""Extracts the OpenAI response schemas kiln answers with from OpenAI's published OpenAPI spec.

Usage: python3 extract.py path/to/openai-openapi/openapi.json COMMIT > schemas.json

The spec lives in the public GitHub repository openai/openai-openapi (file openapi.json).
Every listed component is copied with the components it references ($ref), transitively;
descriptions and examples are dropped (they do not constrain types).
"""
import json
import sys

ROOTS = [
    "CreateCompletionResponse",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ChatCompletionTokenLogprob",
    "CompletionUsage",
    "ErrorResponse",
    "Model",
    "ListModelsResponse",
    "CreateEmbeddingResponse",
]
DROP = {"description", "example", "examples", "x-oaiMeta", "title", "deprecated"}


def strip(node, refs):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            # "properties" maps names to schemas: its keys are never keywords to drop.
            if k in DROP and not isinstance(v, dict) or k == "x-oaiMeta":
                continue
            if k == "$ref":
                refs.append(v.rsplit("/", 1)[-1])
            out[k] = strip(v, refs)
        return out
    if isinstance(node, list):
        return [strip(v, refs) for v in node]
    return node


def main():
    path, commit = sys.argv[1], sys.argv[2]
    with open(path) as f:
        spec = json.load(f)
    all_schemas = spec["components"]["schemas"]
    out, todo = {}, list(ROOTS)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        refs = []
        out[name] = strip(all_schemas[name], refs)
        todo.extend(refs)
    doc = {
        "source": {
            "repository": "openai/openai-openapi",
            "file": "openapi.json",
            "commit": commit,
            "openapi": spec.get("openapi"),
            "version": spec.get("info", {}).get("version"),
        },
        "regenerate": "python3 tests/data/openai/extract.py <checkout>/openapi.json <commit> > tests/data/openai/schemas.json",
        "schemas": dict(sorted(out.items())),
    }
    json.dump(doc, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

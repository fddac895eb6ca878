#!/usr/bin/env python3
"""Drives a running shoal-sidecar with Triton's standard gRPC client (Open Inference Protocol).

  python triton_client.py HOST:PORT MODEL < sentences.json
      stdin: a JSON list of strings. Prints one JSON object:
      {"live", "ready", "model_ready", "server_metadata": {"name", "version", "extensions"},
       "model_metadata": {"name", "versions", "platform", "inputs": [{"name", "datatype", "shape"}],
                          "outputs": [...]},
       "output": {"name", "datatype", "shape"},   (of the output tensor in the reply)
       "embeddings": [[...], ...]}

  python triton_client.py HOST:PORT MODEL --bad
      Sends three bad requests and prints {"unknown_model", "wrong_datatype", "empty_text"}:
      each the error as tritonclient reports it ("[StatusCode.X] message"), or null if the
      request succeeded.

The input and output tensor names come from ModelMetadata, never from this file. The sentences
go as one BYTES tensor of shape [N]; tritonclient sends it in raw_input_contents (each element
a 4-byte little-endian length, then the UTF-8 bytes) and reads the output only from
raw_output_contents.
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def tensor_metadata(tensors):
    return [{"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]} for t in tensors]


def model_metadata(client, model):
    meta = client.get_model_metadata(model)
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensor_metadata(meta.inputs),
        "outputs": tensor_metadata(meta.outputs),
    }


def io_names(meta):
    if len(meta["inputs"]) != 1 or not meta["outputs"]:
        sys.exit(f"triton_client.py: expected one input and an output, got {json.dumps(meta)}")
    return meta["inputs"][0]["name"], meta["outputs"][0]["name"]


def text_input(name, sentences):
    tensor = grpcclient.InferInput(name, [len(sentences)], "BYTES")
    tensor.set_data_from_numpy(np.array([s.encode("utf-8") for s in sentences], dtype=np.object_))
    return tensor


def embed(client, model, input_name, output_name, sentences):
    result = client.infer(
        model,
        [text_input(input_name, sentences)],
        outputs=[grpcclient.InferRequestedOutput(output_name)],
    )
    out = result.get_output(output_name)
    if out is None:
        sys.exit(f"triton_client.py: the reply has no output tensor {output_name!r}")
    described = {"name": out.name, "datatype": out.datatype, "shape": [int(d) for d in out.shape]}
    return described, result.as_numpy(output_name)


def run(client, model):
    sentences = json.load(sys.stdin)
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        sys.exit("triton_client.py: stdin must be a JSON list of strings")
    server = client.get_server_metadata()
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_metadata": {
            "name": server.name,
            "version": server.version,
            "extensions": list(server.extensions),
        },
        "model_metadata": model_metadata(client, model),
    }
    input_name, output_name = io_names(report["model_metadata"])
    report["output"], embeddings = embed(client, model, input_name, output_name, sentences)
    report["embeddings"] = embeddings.astype(np.float64).tolist()
    return report


def error_of(call):
    """The InferenceServerException a call raises, as text; None if it succeeds."""
    try:
        call()
    except InferenceServerException as e:
        return str(e)
    return None


def run_bad(client, model):
    input_name, output_name = io_names(model_metadata(client, model))
    requested = [grpcclient.InferRequestedOutput(output_name)]

    def unknown_model():
        client.infer(model + "-does-not-exist", [text_input(input_name, ["hello"])], outputs=requested)

    def wrong_datatype():
        tensor = grpcclient.InferInput(input_name, [1], "FP32")
        tensor.set_data_from_numpy(np.array([1.0], dtype=np.float32))
        client.infer(model, [tensor], outputs=requested)

    def empty_text():
        client.infer(model, [text_input(input_name, [""])], outputs=requested)

    return {
        "unknown_model": error_of(unknown_model),
        "wrong_datatype": error_of(wrong_datatype),
        "empty_text": error_of(empty_text),
    }


def main():
    parser = argparse.ArgumentParser(
        description="Call a running shoal-sidecar through tritonclient.grpc (KServe V2 / Open Inference Protocol).",
        epilog="Without --bad, reads a JSON list of sentences on stdin and prints their embeddings "
        "with the server and model metadata, as one JSON object.",
    )
    parser.add_argument("url", metavar="HOST:PORT", help="the sidecar's gRPC address, e.g. 127.0.0.1:8001")
    parser.add_argument("model", metavar="MODEL", help="the model name, e.g. all-MiniLM-L6-v2")
    parser.add_argument(
        "--bad",
        action="store_true",
        help="send an unknown model name, an FP32 input and an empty text; print the errors",
    )
    args = parser.parse_args()
    if ":" not in args.url or args.url.startswith(("http://", "https://")):
        parser.error(f"HOST:PORT expected, got {args.url!r}")

    client = grpcclient.InferenceServerClient(url=args.url)
    try:
        report = run_bad(client, args.model) if args.bad else run(client, args.model)
    except InferenceServerException as e:
        sys.exit(f"triton_client.py: {args.url}: {e}")
    finally:
        client.close()
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

"""Reads a pmamba checkpoint with h5py + hdf5plugin alone (docs/FORMAT.md) and checks it.

For every tensor of the manifest: the dataset exists where the manifest says, has the declared
shape and dtype, and xxh3-64 of its decoded little-endian bytes equals the recorded digest.
Tied aliases resolve through their HDF5 links to the same bytes. The manifest's training state
matches its digest. String attributes are fixed-length (h5py returns them as bytes) in format
version 2 and variable-length (str) in version 1.
"""
import json
import os
import sys

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter, id 32015)
import numpy as np
import xxhash

STORAGE = {"float32": "<f4", "float64": "<f8", "int64": "<i8", "int32": "<i4",
           "bfloat16": "<u2", "float16": "<u2"}


def text(value):
    """A string attribute as str, whichever way it is stored."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def main(root):
    step_dir = root
    if not os.path.exists(os.path.join(root, "manifest.json")):
        step_dir = os.path.join(root, open(os.path.join(root, "latest")).read().strip())
    manifest = json.load(open(os.path.join(step_dir, "manifest.json")))
    assert manifest["format"] == "pmamba-ckpt", manifest["format"]
    if manifest["format_version"] >= 2:
        assert len(manifest["run_id"]) == 32, manifest["run_id"]
        train_text = json.dumps(manifest["train"], separators=(",", ":"), ensure_ascii=False)
        assert xxhash.xxh3_64_hexdigest(train_text.encode("utf-8")) == manifest["train_xxh3_64"], train_text
    # Version 3 lists each stage's files; versions 1 and 2 one "file" per stage.
    names = [f["file"] for s in manifest["layout"]["stages"] for f in s.get("files", [s])]
    files = {n: h5py.File(os.path.join(step_dir, n), "r") for n in names}
    for f, h in files.items():
        assert text(h.attrs["format"]) == "pmamba-ckpt"
        assert h.attrs["format_version"] == manifest["format_version"]
        assert json.loads(text(h.attrs["config"])) == manifest["config"]
    checked = 0
    for fqn, entry in manifest["tensors"].items():
        if "alias_of" in entry:
            target = manifest["tensors"][entry["alias_of"]]
            link = files[entry["file"]]["/model/" + fqn.replace(".", "/")]
            data = np.ascontiguousarray(link[()])
            assert xxhash.xxh3_64_hexdigest(data.tobytes()) == target["param"]["xxh3_64"], fqn
            assert entry["xxh3_64"]["param"] == target["param"]["xxh3_64"], fqn
            checked += 1
            continue
        for slot in ("param", "exp_avg", "exp_avg_sq", "step"):
            if slot not in entry:
                continue
            e = entry[slot]
            ds = files[entry["file"]][e["path"]]
            assert text(ds.attrs["dtype"]) == e["dtype"], (fqn, slot)
            assert list(ds.shape) == e["shape"], (fqn, slot, ds.shape)
            data = np.ascontiguousarray(ds[()])
            assert data.dtype == np.dtype(STORAGE[e["dtype"]]), (fqn, slot, data.dtype)
            digest = xxhash.xxh3_64_hexdigest(data.tobytes())
            assert digest == e["xxh3_64"] == text(ds.attrs["xxh3_64"]), (fqn, slot, digest, e["xxh3_64"])
            checked += 1
    if manifest["step"] == 0:  # freshly initialised: A_log = log(1..N) in every row
        a_log = files[manifest["tensors"]["backbone.layers.0.mixer.A_log"]["file"]]["/model/backbone/layers/0/mixer/A_log"][()]
        assert np.allclose(np.exp(a_log[0]), np.arange(1, a_log.shape[1] + 1)), "A_log is not log(1..N)"
    print(f"checked {checked} datasets of {step_dir} with h5py {h5py.__version__} "
          f"(HDF5 {h5py.version.hdf5_version}) and hdf5plugin {hdf5plugin.version}")


if __name__ == "__main__":
    main(sys.argv[1])

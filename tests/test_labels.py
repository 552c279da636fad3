"""``--labels``: ground-truth classes set the explained class; the store keeps label, predicted
and target as integers; the summary reports accuracy; bad label files stop before compute."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import xarray as xr
from test_bad_inputs import BASE, good_folder, tiny16_net

import uni_lab

from uni_lab import cli
from uni_lab.store import Store


def _run(tmp_path, *extra):
    folder = good_folder(tmp_path)
    out = tmp_path / "s.zarr"
    code = cli.main(["run", *BASE, "--images", str(folder), "--out", str(out), *extra])
    return code, out


def _probs(ds) -> np.ndarray:
    tiny16_net()  # imports the plugin that registers tiny16
    with torch.no_grad():
        return uni_lab.create_model("tiny16")(torch.from_numpy(ds.input.isel(model=0).values)).softmax(-1).double().numpy()


def test_without_labels_target_is_the_integer_prediction(tmp_path, capsys):
    code, out = _run(tmp_path)
    assert code == 0
    ds = xr.open_zarr(out)
    for name in ("target", "predicted"):
        assert ds[name].dtype == np.int64, (name, ds[name].dtype)
    np.testing.assert_array_equal(ds.target.values, ds.predicted.values)
    assert (ds.label.values == -1).all()
    assert "accuracy" not in capsys.readouterr().out


@pytest.mark.parametrize("form", ["csv", "csv-no-header", "json", "loc-synsets"])
def test_labels_set_the_explained_class_and_the_accuracy(form, tmp_path, capsys):
    labels = {"a": 3, "b": 0, "c": 2}
    synsets = [f"n0000000{k}" for k in range(4)]
    extra = []
    if form == "csv":
        (tmp_path / "l.csv").write_text("filename,class_index\n" + "".join(f"{k}.png,{v}\n" for k, v in labels.items()))
    elif form == "csv-no-header":
        (tmp_path / "l.csv").write_text("".join(f"sub/{k}.png,{v}\n" for k, v in labels.items()))
    elif form == "json":
        (tmp_path / "l.json").write_text(json.dumps({f"{k}.png": v for k, v in labels.items()}))
    else:  # ImageNet's LOC_val_solution.csv: ImageIds without extension, boxes after each synset
        (tmp_path / "l.csv").write_text("ImageId,PredictionString\n" + "".join(
            f"{k},{synsets[v]} 1 2 30 40 {synsets[v]} 5 6 7 8\n" for k, v in labels.items()) + "zzz,n00000001 1 1 2 2\n")
        (tmp_path / "syn.txt").write_text("".join(f"{s} class {k}\n" for k, s in enumerate(synsets)))
        extra = ["--synsets", str(tmp_path / "syn.txt")]
    path = tmp_path / ("l.json" if form == "json" else "l.csv")
    code, out = _run(tmp_path, "--labels", str(path), *extra)
    assert code == 0, capsys.readouterr().err
    ds = xr.open_zarr(out)
    want = np.array([labels[i] for i in ds.image.values])
    np.testing.assert_array_equal(ds.label.values, want)
    np.testing.assert_array_equal(ds.target.values[0], want)
    assert ds.target.dtype == ds.predicted.dtype == ds.label.dtype == np.int64
    probs = _probs(ds)
    np.testing.assert_array_equal(ds.predicted.values[0], probs.argmax(-1))
    np.testing.assert_allclose(ds.prob_input.values[0], probs[np.arange(3), want], rtol=1e-5)  # F_label(x)
    accuracy = float((probs.argmax(-1) == want).mean())
    printed = capsys.readouterr().out
    assert re.search(r"\baccuracy\b", printed)
    from uni_lab.summary import summarize

    assert summarize(ds)["accuracy"].iloc[0] == pytest.approx(accuracy)


@pytest.mark.parametrize("content,message", [
    ("filename,class\na.png,1\nb.png,2\n", r"no label for 1 of the 3 images \(c\)"),
    ("filename,class\na.png,1\nb.png,7\nc.png,0\n", r"class 7 of image 'b' is outside the model's 4 classes \(0\.\.3\)"),
    ("filename,class\na.png,1\nb.png,cat\nc.png,0\n", r"class 'cat' of image 'b' is neither a class index nor a synset"),
    ("filename,class\na.png,n09999999\nb.png,1\nc.png,0\n", r"synset 'n09999999' of image 'a' is not among the 1000 synsets"),
])
def test_bad_label_files_stop_before_compute(content, message, tmp_path, capsys):
    (tmp_path / "l.csv").write_text(content)
    capsys.readouterr()
    code, out = _run(tmp_path, "--labels", str(tmp_path / "l.csv"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert not Store(out).exists()


def test_missing_labels_file(tmp_path, capsys):
    code, out = _run(tmp_path, "--labels", str(tmp_path / "none.csv"))
    assert code == 2 and "labels file" in capsys.readouterr().err and not Store(out).exists()

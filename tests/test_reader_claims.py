"""Claims the notebooks make, checked (issue #10): fit traces its step once even with a partial
batch (item 1); the README and notebooks 02 and 03 agree with `helpers.training.DIFFERENCES`,
which notebook 02 alone prints, in full (item 8; issue #19)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from helpers.model import create_cnn
from helpers.training import DIFFERENCES

ROOT = Path(__file__).resolve().parent.parent
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def _notebook(name):
    return nbformat.read(ROOT / "notebooks" / name, as_version=4)


def _markdown(name):
    return "\n".join(c.source for c in _notebook(name).cells if c.cell_type == "markdown")


# --- item 1 ------------------------------------------------------------------------------------

def test_fit_traces_its_step_once_with_a_partial_batch(mnist_small):
    """100 samples at batch 64: a full and a partial batch. fit's data adapter gives the batch
    dimension None, so the partial batch costs fit no extra trace (notebook 05_speed's claim)."""
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    x, y = mnist_small[0][:128], mnist_small[1][:128]
    adapter = ArrayDataAdapter(x[:100], y[:100], batch_size=64, shuffle=True)
    spec = adapter.get_tf_dataset().element_spec
    assert spec[0].shape.as_list() == [None, 28, 28, 1]

    def traced_shapes(samples):
        model = create_cnn(seed=0)
        traced = []
        train_step = model.train_step  # its Python body runs only while tracing

        def counted(data):
            traced.append(data[0].shape.as_list())
            return train_step(data)

        model.train_step = counted
        model.fit(x[:samples], y[:samples], batch_size=64, epochs=2, verbose=0)
        return traced

    with_partial, without_partial = traced_shapes(100), traced_shapes(128)
    # The partial batch adds no trace: the same number as with full batches only, all for the
    # one shape whose batch dimension is None.
    assert len(with_partial) == len(without_partial)
    assert all(shape == [None, 28, 28, 1] for shape in with_partial)
    assert all(shape == [64, 28, 28, 1] for shape in without_partial)


# --- item 8 ------------------------------------------------------------------------------------

def _stored_text(name):
    return "".join(output.get("text", "") for cell in _notebook(name).cells
                   if cell.cell_type == "code" for output in cell.get("outputs", []))


@pytest.mark.versionless
def test_the_differences_are_printed_once_in_full_in_notebook_02():
    """02 prints every difference whole (no table truncating it to "Dropout..."); no other
    notebook's stored outputs print the list again."""
    printed = _stored_text("02_article_loop_vs_fit.ipynb")
    for number, difference in enumerate(DIFFERENCES, 1):
        assert (f"{number}. {difference.name}\n   fit(): {difference.fit}\n"
                f"   the article's loop: {difference.article}") in printed
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if path.name != "02_article_loop_vs_fit.ipynb":
            text = _stored_text(path.name)
            assert not any(difference.fit[:40] in text for difference in DIFFERENCES), path.name


@pytest.mark.versionless
def test_notebook_03_switches_are_the_differences():
    code = "\n".join(c.source for c in _notebook("03_matched_tape_loop.ipynb").cells
                     if c.cell_type == "code")
    signature = re.search(r"def tape_loop\((.*?)\):", code, re.DOTALL).group(1)
    switches = {name for name in re.findall(r"(\w+)=False", signature)}
    assert switches == {d.key for d in DIFFERENCES} | {"graph"}
    assert f"its {NUMBER_WORDS[len(DIFFERENCES)]} differences" in _markdown(
        "03_matched_tape_loop.ipynb")


@pytest.mark.versionless
def test_readme_and_notebook_02_agree_with_the_differences():
    count = NUMBER_WORDS[len(DIFFERENCES)]
    intro = " ".join((ROOT / "README.md").read_text().split("## Notebooks", 1)[0].split())
    assert f"differs from `fit()` in {count} ways" in intro
    names = ", ".join(d.name for d in DIFFERENCES[:-1]) + f" and {DIFFERENCES[-1].name}"
    assert names in intro
    assert f"differs from `fit()` in {count} ways" in " ".join(
        _markdown("02_article_loop_vs_fit.ipynb").split())

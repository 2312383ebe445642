"""Check your own training step against fit's from the command line:

    python -m helpers.doctor my_module:make_step --model my_module:model_fn

`make_step(model)` returns your ``step(x_batch, y_batch)``; `model_fn()` returns a compiled
Keras model taking MNIST images (28, 28, 1) and one-hot labels (``--sparse`` for class ids).
Runs `helpers.doctor.check_step` on the first ``--batch-size`` images of a small stratified
MNIST subset (``--subset``) and prints its checklist. Exit status: 0 when your step matches
fit's, 1 when it differs, 2 for bad input (one line on stderr, no traceback).
"""

import argparse
import importlib
import sys

from helpers.doctor import DoctorError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise DoctorError(message)


def _load(spec: str, what: str):
    """``module:name`` -> the object."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise DoctorError(f"{what} {spec!r}: write it as module:name, e.g. my_module:{what}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a missing module, or one that fails on import
        raise DoctorError(f"{what} {spec!r}: cannot import module {module_name!r} "
                          f"({type(error).__name__}: {error})") from error
    try:
        found = getattr(module, name)
    except AttributeError:
        raise DoctorError(f"{what} {spec!r}: module {module_name!r} has no {name!r}") from None
    if not callable(found):
        raise DoctorError(f"{what} {spec!r} is a {type(found).__name__}, not a function")
    return found


def main(argv=None) -> int:
    parser = _Parser(prog="python -m helpers.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("make_step", help="module:name of make_step(model) -> step(x, y)")
    parser.add_argument("--model", required=True, help="module:name of model_fn() -> a "
                        "compiled keras.Model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--subset", type=int, default=256, help="MNIST training images loaded")
    parser.add_argument("--sparse", action="store_true", help="class-id labels, not one-hot")
    try:
        args = parser.parse_args(argv)  # usage errors first, before TensorFlow is imported
        if args.batch_size < 1 or args.subset < max(args.batch_size, 10):
            raise DoctorError(f"--batch-size {args.batch_size} and --subset {args.subset}: "
                              "need 1 <= batch size <= subset and subset >= 10")
        # before your module imports TensorFlow: without its start-up lines
        import helpers.notebook.quiet_tensorflow  # noqa: F401

        if "" not in sys.path:
            sys.path.insert(0, "")  # the current folder, where my_module usually is
        make_step, model_fn = _load(args.make_step, "make_step"), _load(args.model, "model_fn")
        from helpers.data import load_mnist
        from helpers.doctor.step import check_step

        x, y = load_mnist("train", subset=args.subset, seed=0, one_hot=not args.sparse)
        report = check_step(model_fn, make_step, x, y, batch_size=args.batch_size)
    except DoctorError as error:
        print(f"python -m helpers.doctor: error: {error}", file=sys.stderr)
        return 2
    print(report)
    print(f"({report.seconds:.1f} s)")
    return 0 if report.matches_fit else 1


if __name__ == "__main__":
    sys.exit(main())

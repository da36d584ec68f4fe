"""`python -m benchmarks`: list the benchmarks; `python -m benchmarks NAME [ARGS]`: run one
(ARGS go to it: `python -m benchmarks NAME --help`); `python -m benchmarks all`: run each
with its defaults, one after another in its own process, then repeat their RATIO lines."""
import ast
import importlib
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "__main__", "common"}


def benchmarks() -> dict:
    """{name: the first line of its docstring}, read without importing (TensorFlow is slow)."""
    return {
        path.stem: (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n")[0]
        for path in sorted(HERE.glob("*.py")) if path.stem not in NOT_BENCHMARKS
    }


def run_all() -> int:
    ratios, failed = [], []
    for name in benchmarks():
        print(f"===== {name}", flush=True)
        child = subprocess.Popen([sys.executable, "-m", "benchmarks", name], cwd=HERE.parent,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in child.stdout:
            print(line, end="", flush=True)
            if line.startswith("RATIO"):
                ratios.append(f"{name}: {line.strip()}")
        if child.wait():
            failed.append(name)
    print("===== summary", *ratios, sep="\n")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def main() -> int:
    names = benchmarks()
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "list"):
        print("python -m benchmarks NAME [ARGS]  (NAME --help for its options):")
        width = max(map(len, names))
        for name, summary in names.items():
            print(f"  {name:<{width}}  {summary}")
        print(f"  {'all':<{width}}  every one of them with its defaults")
        return 0
    name = sys.argv[1]
    if name == "all":
        return run_all()
    if name not in names:
        print(f"unknown benchmark {name!r}; choose from: {', '.join(names)}, all", file=sys.stderr)
        return 2
    sys.argv = [f"python -m benchmarks {name}", *sys.argv[2:]]
    importlib.import_module(f"benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main())

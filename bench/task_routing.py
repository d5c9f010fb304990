"""Task routing measured: the word classifier (:mod:`federation.task_classifier`) on a held-out split of the
shipped labelled prompts (every fifth prompt, never trained on), with the confidence threshold chosen by
4-fold cross-validation on the training split alone; the keyword rule of the previous release alongside.
Reports accuracy, per-task precision/recall, the confusion matrix and the issue's five prompts. Writes
``bench/results/task-routing.json``. Usage: ``python -m bench.task_routing``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bench.record import write_results

THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)
ISSUE_PROMPTS = {
    "Write a headline for our plant-based coffee": "creative",
    "…love the roast: write copy": "creative",
    "Write three taglines for the spring flight": "creative",
    "Draft a short ad": "creative",
    "Create social copy": "creative",
}


def _predict(model: Any, text: str, threshold: float) -> str | None:
    task, confidence = model.predict(text)
    return task if confidence >= threshold else None


def _accuracy(model: Any, rows: list[tuple[str, str | None]], threshold: float) -> float:
    return sum(_predict(model, t, threshold) == y for t, y in rows) / len(rows)


def main() -> None:
    from federation.task_classifier import TaskClassifier, classify_task, load_examples, task_keywords

    rows = load_examples()
    train = [r for i, r in enumerate(rows) if i % 5]
    held = [r for i, r in enumerate(rows) if i % 5 == 0]
    kw = task_keywords()
    cv = {}
    for th in THRESHOLDS:
        folds = [
            _accuracy(
                TaskClassifier([r for i, r in enumerate(train) if i % 4 != f], kw),
                [r for i, r in enumerate(train) if i % 4 == f],
                th,
            )
            for f in range(4)
        ]
        cv[th] = round(sum(folds) / 4, 3)
    chosen = max(THRESHOLDS, key=lambda th: (cv[th], -th))
    model = TaskClassifier(train, kw)
    predicted = [(_predict(model, t, chosen), y, t) for t, y in held]
    labels = sorted({str(y) for _, y in rows})
    per_task = {}
    for label in labels:
        tp = sum(str(p) == label and str(y) == label for p, y, _ in predicted)
        fp = sum(str(p) == label and str(y) != label for p, y, _ in predicted)
        fn = sum(str(p) != label and str(y) == label for p, y, _ in predicted)
        per_task[label] = {
            "precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "recall": round(tp / (tp + fn), 3) if tp + fn else None,
        }
    results = {
        "prompts": len(rows),
        "train": len(train),
        "held_out": len(held),
        "threshold_cv_accuracy": {str(k): v for k, v in cv.items()},
        "threshold": chosen,
        "held_out_accuracy": round(sum(p == y for p, y, _ in predicted) / len(held), 3),
        "held_out_accuracy_keywords_only": round(sum(classify_task(t) == y for t, y in held) / len(held), 3),
        "per_task": per_task,
        "confusion": {
            f"{y}->{p}": n for (p, y), n in Counter((str(p), str(y)) for p, y, _ in predicted).items()
        },
        "misrouted": [{"prompt": t, "label": y, "routed": p} for p, y, t in predicted if p != y],
        "issue_prompts": {t: TaskClassifier.shipped().predict(t)[0] for t in ISSUE_PROMPTS},
    }
    print({k: v for k, v in results.items() if k != "misrouted"}, flush=True)
    write_results(Path("bench/results/task-routing.json"), results)


if __name__ == "__main__":
    main()

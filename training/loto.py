"""Leave-one-task-out splits: train on every task but one, evaluate on the one left out.

A router that only learned the topics of its training tasks scores well in distribution and
badly here; this is the split that says whether routing carries to prompts of a new kind.
Tasks come from each record's `task` key (RouterBench's `eval_name`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.dataset import Dataset, DatasetError


@dataclass(frozen=True)
class TaskFold:
    task: str
    train: Dataset
    test: Dataset


def tasks_of(ds: Dataset) -> np.ndarray:
    """The `task` of every record; a dataset without tasks cannot be split by task."""
    if not ds.extra or any(not e.get("task") for e in ds.extra):
        raise DatasetError("leave-one-task-out needs a `task` on every record")
    return np.array([str(e["task"]) for e in ds.extra])


def leave_one_task_out(train: Dataset, test: Dataset | None = None) -> list[TaskFold]:
    """One fold per task: train = `train` without that task, test = that task's records of
    `test` (or of `train` when no separate test split is given). Asserts no leak by task or text."""
    test = train if test is None else test
    t_train, t_test = tasks_of(train), tasks_of(test)
    folds = []
    for task in sorted(set(t_train) | set(t_test)):
        tr, te = train.subset(t_train != task), test.subset(t_test == task)
        if not len(tr) or not len(te):
            continue
        assert task not in set(tasks_of(tr)), f"held-out task {task!r} leaked into training"
        assert not set(tr.prompts) & set(te.prompts), f"a prompt of {task!r} is also in training"
        folds.append(TaskFold(task, tr, te))
    if len(folds) < 2:
        raise DatasetError("leave-one-task-out needs at least two tasks")
    return folds

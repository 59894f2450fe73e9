"""fade leaves Python's logging to the program it runs in: the CLI entry and model loading drop only
the records of the libraries they report for themselves, never everyone's (``logging.disable``)."""
from __future__ import annotations

import logging
import sys

import pytest

from conftest import MODEL_CONFIG, WEIGHTS


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def root_handler(monkeypatch):
    """A handler on the root logger, as a program that configured logging has; logging restored after."""
    kept = _Kept()
    monkeypatch.setattr(logging.root, "handlers", [kept])
    monkeypatch.setattr(logging.root, "filters", [])
    monkeypatch.setattr(logging.root, "level", logging.WARNING)
    monkeypatch.delenv("HF_HUB_VERBOSITY", raising=False)
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    yield kept
    logging.disable(logging.NOTSET)


def test_the_cli_entry_leaves_the_root_logger_on(root_handler, monkeypatch):
    import fade_cli  # noqa: F401
    from fade_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["fade", "--version"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 0
    assert logging.root.manager.disable == logging.NOTSET
    logging.getLogger("an.application").warning("still logged")
    assert [record.getMessage() for record in root_handler.records] == ["still logged"]
    assert not any(isinstance(handler, logging.NullHandler) for handler in logging.root.handlers)


def test_loading_a_model_drops_open_clip_records_only(root_handler, monkeypatch):
    from fade_cli.config import EngineConfig
    from fade_cli.backbone.model import load_model
    from fade_cli.backbone.open_clip_import import open_clip_module

    open_clip = open_clip_module()
    create_model = open_clip.create_model

    def create_model_while_another_thread_logs(*args, **kwargs):
        logging.getLogger("an.application").warning("logged during model building")
        return create_model(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", create_model_while_another_thread_logs)
    load_model(EngineConfig(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu"))
    messages = [record.getMessage() for record in root_handler.records]
    assert messages == ["logged during model building"]  # open_clip's "initialized randomly" is not
    assert logging.root.filters == []
    assert logging.root.manager.disable == logging.NOTSET

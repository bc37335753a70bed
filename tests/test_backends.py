"""Switching backends is a settings change: the same code runs on MongoDB and MinIO."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from orchestrator import keys
from orchestrator.objects import open_objects
from orchestrator.objects.local import LocalObjectStore
from orchestrator.objects.minio import MinioObjectStore
from orchestrator.records import open_records
from orchestrator.records.mongo import MongoRecordStore
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.settings import Settings, translate_seed_config


@pytest.fixture
def home(monkeypatch, tmp_path):
    """An empty home and no WTM_ variables, whatever the caller's shell has."""
    for name in list(os.environ):
        if name.startswith("WTM_"):
            monkeypatch.delenv(name)
    return tmp_path


def test_settings_without_endpoints_open_the_embedded_stores(home):
    settings = Settings(home=home)
    records = open_records(settings)

    assert isinstance(records, SqliteRecordStore)
    assert isinstance(open_objects(settings), LocalObjectStore)
    records.close()


def test_a_mongo_uri_opens_a_mongo_record_store(home):
    records = open_records(Settings(home=home, records={"uri": "mongomock://x", "database": "d"}))
    try:
        assert isinstance(records, MongoRecordStore)
        assert records.list_tasks() == []
    finally:
        records.close()


def test_an_endpoint_opens_a_minio_object_store_that_round_trips(home, s3_endpoint):
    settings = Settings(
        home=home, objects={"endpoint": s3_endpoint, "access_key": "a", "secret_key": "b"}
    )
    objects = open_objects(settings)
    key = f"tasks/{uuid.uuid4().hex}/1.0.0/x.tar.gz"

    objects.put(keys.TASKS_BUCKET, key, b"package bytes")

    assert isinstance(objects, MinioObjectStore)
    assert objects.get(keys.TASKS_BUCKET, key) == b"package bytes"
    assert objects.uri(keys.TASKS_BUCKET, key) == f"s3://{keys.TASKS_BUCKET}/{key}"


SEED_SECTIONS = {
    "database": {
        "type": "mongodb",
        "host": "mongo.example",
        "port": 27017,
        "database": "ai_worker",
        "username": "admin",
        "password": "admin123",
        "auth_source": "admin",
    },
    "minio": {
        "endpoint": "minio.example:9000",
        "access_key": "minioadmin",
        "secret_key": "minioadmin123",
        "bucket": "ai-tasks",
        "secure": False,
    },
}


def test_the_seeds_database_and_minio_sections_select_mongo_and_minio(home):
    # Opening connects to nothing: both clients are lazy until the first call.
    translated = translate_seed_config(SEED_SECTIONS)
    (home / "config.json").write_text(json.dumps(SEED_SECTIONS))
    settings = Settings(home=home)

    assert settings.records.model_dump(include=set(translated["records"])) == translated["records"]
    records = open_records(settings)
    objects = open_objects(settings)
    try:
        assert isinstance(records, MongoRecordStore)
        assert records.where == "mongodb://***@mongo.example:27017/?authSource=admin"
        assert isinstance(objects, MinioObjectStore)
        assert objects.endpoint == "minio.example:9000"
    finally:
        records.close()

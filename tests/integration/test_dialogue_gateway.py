"""Consultations through the real gateway, Redis and Triton (``dialogue_generate`` over the ONNX encoder and
generator): whole and streamed answers, history, red flags, privacy, TTL and the length cap."""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from gateway.dialogue_sessions import MAX_MESSAGES, SESSION_TTL_S
from services.dialogue import core
from services.dialogue.safety import NOTICE
from tests.conftest import create_api_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dialogue_key(stack) -> str:
    return create_api_key(stack, ["dialogue"], name="dialogue")


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def _stream(client: httpx.Client, session_id: str, content: str) -> list[tuple[str, dict]]:
    with client.stream("POST", f"/v1/dialogue/sessions/{session_id}/messages",
                       json={"content": content, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return _events(response)


def test_multi_turn_consultation_whole_and_streamed(stack, dialogue_key) -> None:
    with stack.client(dialogue_key) as client:
        created = client.post("/v1/dialogue/sessions", json={"language": "en"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]

        first = client.post(f"/v1/dialogue/sessions/{sid}/messages",
                            json={"content": "I have had a blocked nose and pain around my cheeks for three days."})
        assert first.status_code == 200, first.text
        answer = first.json()
        assert answer["role"] == "assistant" and answer["content"].strip()
        assert answer["notice"] == NOTICE and answer["red_flags"] == []
        assert answer["instruction"]["type"] in core.TYPES and answer["instruction"]["action"] in core.ACTION_NAMES
        assert answer["model"]["name"] == "dialogue_generate" and answer["model"]["version"]

        events = _stream(client, sid, "What medicine can I take for it?")
        kinds = [e for e, _ in events]
        assert kinds[0] == "meta" and kinds[-1] == "message" and "token" in kinds
        assert events[0][1]["instruction"]["action"] in core.ACTION_NAMES
        streamed = "".join(d["text"] for e, d in events if e == "token")
        message = events[-1][1]
        assert message["content"] == streamed.strip() and message["notice"] == NOTICE

        history = client.get(f"/v1/dialogue/sessions/{sid}")
        assert history.status_code == 200
        messages = history.json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
        assert messages[3]["content"] == message["content"]


@pytest.mark.parametrize("content", ["I have crushing chest pain and I am short of breath",
                                     "I suddenly lost the vision in my right eye an hour ago",
                                     "I was vomiting blood this morning"])
def test_red_flags_always_get_urgent_care(stack, dialogue_key, content) -> None:
    with stack.client(dialogue_key) as client:
        sid = client.post("/v1/dialogue/sessions", json={}).json()["id"]
        whole = client.post(f"/v1/dialogue/sessions/{sid}/messages", json={"content": content}).json()
        assert whole["red_flags"] and "emergency" in whole["content"] and whole["notice"] == NOTICE
        assert whole["model"] is None  # answered by the rule, not the model
        events = _stream(client, sid, content)
        assert events[0][1]["red_flags"] == whole["red_flags"]
        assert "emergency" in events[-1][1]["content"]


def test_sessions_are_private_bounded_and_expire(stack, dialogue_key) -> None:
    other = create_api_key(stack, ["dialogue"], name="dialogue-other")
    with stack.client(dialogue_key) as client, stack.client(other) as intruder:
        sid = client.post("/v1/dialogue/sessions", json={}).json()["id"]
        assert intruder.get(f"/v1/dialogue/sessions/{sid}").status_code == 404
        assert client.get("/v1/dialogue/sessions/nope").json()["type"].endswith("/session-not-found")
        assert client.post(f"/v1/dialogue/sessions/{sid}/messages", json={"content": ""}).status_code == 422
        assert client.post("/v1/dialogue/sessions", json={"language": "xx"}).status_code == 422
        ttl = redis.Redis.from_url(stack.redis_url).ttl(f"medstack:dialogue:session:{sid}")
        assert 0 < ttl <= SESSION_TTL_S
        for _ in range(MAX_MESSAGES // 2):  # red-flag turns: answered without the model, quickly
            response = client.post(f"/v1/dialogue/sessions/{sid}/messages",
                                   json={"content": "I am vomiting blood"})
            assert response.status_code == 200, response.text
        full = client.post(f"/v1/dialogue/sessions/{sid}/messages", json={"content": "hello"})
        assert full.status_code == 409 and full.json()["type"].endswith("/session-full")
        assert len(client.get(f"/v1/dialogue/sessions/{sid}").json()["messages"]) == MAX_MESSAGES

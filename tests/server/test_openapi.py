"""The OpenAPI document states what the handlers take: the attention switch as the served models
take it, and the Open Inference Protocol's request in its JSON form."""
from server.config import Config
from server.openapi import openapi_document


def caption_parameters(document: dict) -> dict:
    return {p["name"]: p["schema"] for p in document["paths"]["/api/v1/captions"]["post"]["parameters"]}


def test_attention_is_offered_as_the_served_models_take_it():
    none = openapi_document(Config(), 12, ["a", "b"], [])
    assert caption_parameters(none)["attention"]["enum"] == [False]
    assert none["components"]["schemas"]["InferenceRequest"]["properties"]["parameters"]["properties"][
        "attention"]["enum"] == [False]
    assert "attention" not in none["components"]["schemas"]["InferenceRequest"]["properties"]["outputs"]["items"][
        "properties"]["name"]["enum"]
    every = caption_parameters(openapi_document(Config(), 12, ["a"], ["a"]))["attention"]
    assert every["type"] == "boolean" and "enum" not in every
    mixed = caption_parameters(openapi_document(Config(), 12, ["a", "b"], ["b"]))["attention"]
    assert "enum" not in mixed and mixed["description"].endswith("served with one: b")


def test_the_inference_request_is_json_with_shapes_and_images_held_to_the_limits():
    config = Config()
    document = openapi_document(config, 12, ["a"], [])
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert list(infer["requestBody"]["content"]) == ["application/json"]  # the binary extension is in words
    assert "Inference-Header-Content-Length" in infer["description"]
    tensor = document["components"]["schemas"]["InferenceRequest"]["properties"]["inputs"]["items"]["properties"]
    assert tensor["shape"]["maxItems"] == 2 and tensor["shape"]["items"]["maximum"] == config.max_images
    assert tensor["data"]["maxItems"] == config.max_images

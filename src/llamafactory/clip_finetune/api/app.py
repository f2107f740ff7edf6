"""The HTTP API of a trained run (FastAPI): ``/v1/embeddings`` in the OpenAI format (text input; images as an
extension), ``/v1/classify`` (top-k labels per image) and ``/v1/models``. Launched by ``llamafactory-cli api`` with a
``stage: clip`` yaml, honouring LLaMA-Factory's ``API_HOST`` / ``API_PORT``."""

import os
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from .predictor import BadRequest, ClipPredictor, parse_api_args


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="Text(s) to embed (OpenAI's field).")
    images: list[str] | None = Field(default=None, description="Extension: base64 images to embed instead of text.")
    model: str | None = None


class ClassifyRequest(BaseModel):
    images: list[str] = Field(description="Base64-encoded image files (PNG, JPEG, ...).")
    labels: list[str] | None = Field(default=None, description="Class names (default: the served run's classes).")
    top_k: int = Field(default=5, ge=1)


def create_app(predictor: ClipPredictor) -> FastAPI:
    app = FastAPI(title="llamafactory-clip API", root_path=os.getenv("FASTAPI_ROOT_PATH", ""))

    def answer(call):
        try:
            return call()
        except BadRequest as err:
            raise HTTPException(status_code=400, detail=str(err)) from None

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": predictor.name, "object": "model", "owned_by": "llamafactory-clip"}]}

    @app.post("/v1/embeddings")
    def embeddings(request: EmbeddingsRequest) -> dict[str, Any]:
        texts = [request.input] if isinstance(request.input, str) else list(request.input)

        def embed():
            if request.images:
                return predictor.image_features(request.images), 0
            tokens = sum(predictor.tokenizer.count(t) for t in texts)
            return predictor.text_features(texts), tokens

        features, tokens = answer(embed)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(features.tolist())],
            "model": request.model or predictor.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/v1/classify")
    def classify(request: ClassifyRequest) -> dict[str, Any]:
        results = answer(lambda: predictor.classify(request.images, request.labels, request.top_k))
        return {"object": "list", "data": [{"index": i, "top_k": top} for i, top in enumerate(results)]}

    return app


def run_clip_api(args: dict[str, Any]) -> None:
    import uvicorn

    predictor = ClipPredictor(*parse_api_args(args))
    host, port = os.getenv("API_HOST", "0.0.0.0"), int(os.getenv("API_PORT", "8000"))
    print(f"Serving {predictor.name}: visit http://localhost:{port}/docs for the API document.")
    uvicorn.run(create_app(predictor), host=host, port=port)

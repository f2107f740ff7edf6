"""The HTTP API of a trained run (FastAPI): ``/v1/embeddings`` in the OpenAI format (text input; images as base64
or ``image_url`` items), ``/v1/classify`` (top-k labels per image), ``/v1/models`` and ``/health``. Launched by
``llamafactory-cli api`` with a ``stage: clip`` yaml, honouring LLaMA-Factory's ``API_HOST`` / ``API_PORT`` and its
``API_KEY`` (a bearer token every endpoint but ``/health`` requires when set)."""

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security.http import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from .predictor import BadRequest, ClipPredictor, parse_api_args


class EmbeddingsRequest(BaseModel):
    input: str | list[str | dict[str, Any]] = Field(
        description="Text(s) to embed (OpenAI's field); an item may be an image: "
        '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}.'
    )
    images: list[str] | None = Field(default=None, description="Extension: base64 images to embed instead of text.")
    model: str | None = None


class ClassifyRequest(BaseModel):
    images: list[str] = Field(description="Base64-encoded image files (PNG, JPEG, ...).")
    labels: list[str] | None = Field(default=None, description="Class names (default: the served run's classes).")
    top_k: int = Field(default=5, ge=1)


def image_url(item: dict[str, Any], index: int) -> str:
    """The base64 payload of an ``{"type": "image_url", "image_url": {"url": "data:...;base64,..."}}`` item."""
    url = item.get("image_url", {}).get("url") if isinstance(item.get("image_url"), dict) else item.get("image_url")
    if item.get("type") != "image_url" or not isinstance(url, str):
        raise BadRequest(
            f"input {index}: an item that is not text must be {{'type': 'image_url', 'image_url': {{'url': ...}}}}."
        )
    if not url.startswith("data:"):
        raise BadRequest(
            f"input {index}: only data URLs (data:image/...;base64,...) are served: this server fetches nothing."
        )
    return url


def create_app(predictor: ClipPredictor) -> FastAPI:
    api_key = os.getenv("API_KEY")  # LLaMA-Factory's API reads the same variable
    bearer = HTTPBearer(auto_error=False)

    def check_key(auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if api_key and (auth is None or auth.credentials != api_key):
            raise HTTPException(status_code=401, detail="Invalid API key.")

    app = FastAPI(title="llamafactory-clip API", root_path=os.getenv("FASTAPI_ROOT_PATH", ""))
    secured = {"dependencies": [Depends(check_key)]}

    def answer(call):
        try:
            return call()
        except BadRequest as err:
            raise HTTPException(status_code=400, detail=str(err)) from None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", **secured)
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": predictor.name, "object": "model", "owned_by": "llamafactory-clip"}]}

    @app.post("/v1/embeddings", **secured)
    def embeddings(request: EmbeddingsRequest) -> dict[str, Any]:
        items = [request.input] if isinstance(request.input, str) else list(request.input)

        def embed():
            if request.images:
                return predictor.image_features(request.images), 0
            if any(not isinstance(item, str) for item in items):
                if not all(isinstance(item, dict) for item in items):
                    raise BadRequest("input: give texts or image_url items, not both in one request.")
                return predictor.image_features([image_url(item, i) for i, item in enumerate(items)]), 0
            texts = items
            tokens = sum(predictor.tokenizer.count(t) for t in texts)
            return predictor.text_features(texts), tokens

        features, tokens = answer(embed)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(features.tolist())],
            "model": request.model or predictor.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/v1/classify", **secured)
    def classify(request: ClassifyRequest) -> dict[str, Any]:
        results = answer(lambda: predictor.classify(request.images, request.labels, request.top_k))
        return {"object": "list", "data": [{"index": i, "top_k": top} for i, top in enumerate(results)]}

    return app


def run_clip_api(args: dict[str, Any]) -> None:
    import uvicorn

    predictor = ClipPredictor(*parse_api_args(args))
    # loopback unless told otherwise (LLaMA-Factory's chat API binds 0.0.0.0; the Docker image sets API_HOST)
    host, port = os.getenv("API_HOST", "127.0.0.1"), int(os.getenv("API_PORT", "8000"))
    print(f"Serving {predictor.name}: visit http://localhost:{port}/docs for the API document.")
    uvicorn.run(create_app(predictor), host=host, port=port)

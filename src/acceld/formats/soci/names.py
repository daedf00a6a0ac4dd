"""SOCI media types and annotation keys (soci.md §3), free of the OCI models: a conversion worker
imports the driver without pydantic."""

INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
ZTOC_MEDIA_TYPE = "application/octet-stream"
EMPTY_CONFIG = b"{}"
BUILD_TOOL_ANNOTATION = "com.amazon.soci.build-tool-identifier"
LAYER_DIGEST_ANNOTATION = "com.amazon.soci.image-layer-digest"
LAYER_MEDIA_TYPE_ANNOTATION = "com.amazon.soci.image-layer-mediaType"
SPAN_SIZE_ANNOTATION = "com.amazon.soci.span-size"
INDEX_DIGEST_ANNOTATION = "com.amazon.soci.index-digest"
IMAGE_MANIFEST_DIGEST_ANNOTATION = "com.amazon.soci.image-manifest-digest"

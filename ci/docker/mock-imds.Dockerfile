# mock-imds: the Azure IMDS emulator as a FROM scratch image.
# Built by ci/build-images.sh from a statically linked binary compiled on the host (no base image is pulled).
# Build context: a staging directory holding `mock-imds` and `rootfs/`. For the release image rootfs/ is empty
# (the binary is static); the testcontainers tests reuse this file with a debug binary and its shared
# libraries in rootfs/ (mock-imds/tests/testcontainers_mock.rs).
FROM scratch
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/imds-conformance/imds-conformance
LABEL org.opencontainers.image.title="mock-imds" \
      org.opencontainers.image.description="A faithful emulator of the Azure Instance Metadata Service (IMDS)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY rootfs/ /
COPY mock-imds /mock-imds
# Unprivileged by default; the kind DaemonSet that binds 169.254.169.254:80 runs it with NET_BIND_SERVICE.
USER 65534:65534
EXPOSE 8080
# 0.0.0.0 is right inside a container (its own network namespace); the CLI default is 127.0.0.1:8080.
ENTRYPOINT ["/mock-imds"]
CMD ["--listen", "0.0.0.0:8080"]

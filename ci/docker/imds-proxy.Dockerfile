# imds-proxy: the NMI-compatible interceptor as a FROM scratch image.
# Built by ci/build-images.sh (no base image is pulled). Build context: a staging directory holding the
# statically linked `imds-proxy` and `rootfs/`, which carries the host's iptables (nft backend) and conntrack
# tools with exactly the shared libraries and xtables extensions they load: imds-proxy runs them as programs
# to manage the aad-metadata chain and to delete conntrack entries, as NMI does.
FROM scratch
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/imds-conformance/imds-conformance
LABEL org.opencontainers.image.title="imds-proxy" \
      org.opencontainers.image.description="An IMDS interception proxy for Kubernetes nodes, drop-in compatible with aad-pod-identity NMI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY rootfs/ /
COPY imds-proxy /imds-proxy
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    XTABLES_LIBDIR=/usr/lib/x86_64-linux-gnu/xtables
# Runs as root: iptables needs NET_ADMIN/NET_RAW in the node's network namespace (see ci/manifests).
ENTRYPOINT ["/imds-proxy"]

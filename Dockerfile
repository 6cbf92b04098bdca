# olla container image: a Rust build stage, then a small Debian runtime with a non-root user.
#   docker build -t olla .
#   docker run --rm -p 40114:40114 --add-host=host.docker.internal:host-gateway olla
# The default config (config/docker.yaml) points at an Ollama on the Docker host; mount your
# own at /etc/olla/config.yaml. The health check runs `olla healthcheck` (no curl needed).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin olla \
 && install -Dm755 target/release/olla /out/olla

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 olla \
 && useradd --system --uid 10001 --gid olla --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin olla
COPY --from=build /out/olla /usr/local/bin/olla
COPY config/docker.yaml /etc/olla/config.yaml
ENV OLLA_CONFIG_FILE=/etc/olla/config.yaml \
    NO_COLOR=1
USER olla:olla
EXPOSE 40114
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
    CMD ["olla", "healthcheck", "--timeout", "3s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["olla"]
CMD ["run"]

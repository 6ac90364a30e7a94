# natter's image: every binary (natter-edge, the three workers, natterctl)
# and the web client. Build from the project root:
#
#   docker build -t natter:latest .
#
# The build stage runs the commands CI runs to build (cargo build of the
# workspace's binaries, npm ci of the web client), in release mode.

FROM rust:1-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && (cd web && npm ci --no-audit --no-fund --loglevel=error)

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 natter
COPY --from=build /src/target/release/natter-edge \
                  /src/target/release/natter-worker-messages \
                  /src/target/release/natter-worker-attachments \
                  /src/target/release/natter-worker-audit \
                  /src/target/release/natterctl \
                  /usr/local/bin/
COPY --from=build /src/web/index.html /src/web/app.js /src/web/style.css /srv/natter/web/
COPY --from=build /src/web/node_modules/socket.io-client/dist/socket.io.min.js /srv/natter/web/node_modules/socket.io-client/dist/
ENV WEB_DIR=/srv/natter/web LISTEN_ADDR=0.0.0.0:8080 RUST_LOG=info LOG_FORMAT=json
USER natter
EXPOSE 8080
CMD ["natter-edge"]

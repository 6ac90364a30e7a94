#!/usr/bin/env bash
# Prints permissions.conf (beside this script) for another NATS_NAMESPACE,
# renaming as natter-nats's Subjects does: subjects `chat.` become `NS.`,
# streams `CHAT_` become `NS_` upper-cased with `-` as `_`, buckets `chat_`
# become `NS_` with `-` as `_`. Comments are left as they are.
#   infra/nats/for-namespace.sh acme-chat > infra/nats/permissions-acme-chat.conf
set -euo pipefail
ns=${1:?usage: $0 NAMESPACE}
if ! [[ "$ns" =~ ^[A-Za-z0-9_-]+$ ]]; then
  echo "for-namespace: a namespace is one subject token: letters, digits, '-' and '_'" >&2
  exit 2
fi
upper=$(printf '%s' "$ns" | tr 'a-z-' 'A-Z_')
bucket=$(printf '%s' "$ns" | tr '-' '_')
echo "# Rendered by infra/nats/for-namespace.sh for NATS_NAMESPACE=$ns from permissions.conf"
echo "# (whose comments speak of the namespace \`chat\`)."
sed -e "/^[[:space:]]*#/!{s/\([\"\.]\)chat\./\1$ns./g; s/\([\"\.]\)CHAT_/\1${upper}_/g; s/\([\"\._]\)chat_/\1${bucket}_/g;}" \
  "$(dirname "$0")/permissions.conf"

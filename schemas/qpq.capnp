@0xc510b8c1f348e2ab;
# quicproquo client API, wire version 1.
#
# Rules (see docs/wire-protocol.md):
# - Every request and response struct carries `version`. A node answers a request whose
#   version it does not speak with `Error.unsupportedVersion` (carrying the highest version
#   it does speak) and never guesses.
# - Fields are only ever appended; ordinals are never reused; a union only gains members.
# - Application errors are values (`Error`), not Cap'n Proto exceptions. An exception means a
#   transport or framing problem, never a rejected request.
# - `accessToken` is the caller's bearer token. Until authentication is enabled it is ignored
#   and may be empty.

struct Error {
  # Human-readable detail. Never contains payloads, keys or tokens.
  message @0 :Text;

  union {
    internal @1 :Void;
    # The node failed in a way the client cannot fix; retrying later may succeed.

    invalidArgument @2 :Text;
    # The named request field is malformed (length, UTF-8, encoding, range).

    payloadTooLarge @3 :UInt64;
    # The payload exceeds the cap; carries the cap in bytes.

    unsupportedVersion @4 :UInt16;
    # The request's `version` is not spoken here; carries the highest version that is.

    notFound @5 :Void;
    # Nothing to return (for example no KeyPackage left for an identity).

    staleEpoch @6 :UInt64;
    # A Commit for an epoch that already has one, or for an older epoch. Carries the epoch
    # the group's channel now expects a Commit for.

    rateLimited @7 :UInt64;
    # Too many requests; carries the milliseconds to wait before retrying.

    quotaExceeded @8 :Text;
    # A storage quota was hit; carries the quota's name.

    unavailable @9 :UInt64;
    # The node cannot serve this right now (no leader, draining); retry after the carried
    # milliseconds, possibly on another node.

    unauthenticated @10 :Void;
    tokenExpired @11 :Void;
    forbidden @12 :Void;
    identityMismatch @13 :Void;
  }
}

# ----------------------------------------------------------------------------------------
# Authentication Service: KeyPackages

struct UploadKeyPackagesRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  keyPackages @2 :List(Data);
  # TLS-serialised MLSMessage or KeyPackage structures (RFC 9420 §10), single-use.
  lastResort @3 :Data;
  # Optional (empty = none): replaces the identity's last-resort KeyPackage, served only
  # when no single-use one is left and never consumed.
}

struct UploadKeyPackagesResponse {
  version @0 :UInt16;
  union {
    ok @1 :UploadKeyPackagesOk;
    err @2 :Error;
  }
}

struct UploadKeyPackagesOk {
  accepted @0 :UInt32;
  # Packages stored by this call, the last-resort one included.
  available @1 :UInt32;
  # Single-use KeyPackages now available for the identity.
}

struct FetchKeyPackageRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  identity @2 :Data;
  # 32-byte identity key (the Ed25519 MLS signature key of a device).
}

struct FetchKeyPackageResponse {
  version @0 :UInt16;
  union {
    ok @1 :FetchKeyPackageOk;
    err @2 :Error;
  }
}

struct FetchKeyPackageOk {
  keyPackage @0 :Data;
  lastResort @1 :Bool;
}

struct KeyPackageCountRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  identity @2 :Data;
}

struct KeyPackageCountResponse {
  version @0 :UInt16;
  union {
    ok @1 :KeyPackageCountOk;
    err @2 :Error;
  }
}

struct KeyPackageCountOk {
  available @0 :UInt32;
  hasLastResort @1 :Bool;
}

# ----------------------------------------------------------------------------------------
# Delivery Service

struct EnqueueRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  channelId @2 :Data;
  # 16 bytes.
  clientMsgId @3 :Data;
  # 16 bytes (a UUID chosen by the sender when it created the message); the dedupe key.
  payload @4 :Data;
  # A TLS-serialised MLSMessage, at most 5 MiB.
}

struct EnqueueResponse {
  version @0 :UInt16;
  union {
    ok @1 :EnqueueOk;
    err @2 :Error;
  }
}

struct EnqueueOk {
  seq @0 :UInt64;
  duplicate @1 :Bool;
  # True when `clientMsgId` had been enqueued before; `seq` is then the original one.
}

struct FetchRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  channelId @2 :Data;
  afterSeq @3 :UInt64;
  limit @4 :UInt32;
  # 0 means the server's default; values above the server's maximum are clamped.
}

struct FetchWaitRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  channelId @2 :Data;
  afterSeq @3 :UInt64;
  limit @4 :UInt32;
  timeoutMs @5 :UInt32;
  # Clamped to the server's cap; the effective value is echoed in the response.
}

struct Envelope {
  seq @0 :UInt64;
  clientMsgId @1 :Data;
  payload @2 :Data;
  enqueuedAtMs @3 :UInt64;
}

struct FetchOk {
  messages @0 :List(Envelope);
  firstAvailableSeq @1 :UInt64;
  # Lowest sequence number still retained (0 when the channel holds nothing). When it is
  # greater than `afterSeq + 1`, messages in between expired: the client must surface the gap.
  lastSeq @2 :UInt64;
  # Highest sequence number ever assigned in the channel (0 if none).
  effectiveTimeoutMs @3 :UInt32;
  # fetchWait only: the timeout the server actually applied.
}

struct FetchResponse {
  version @0 :UInt16;
  union {
    ok @1 :FetchOk;
    err @2 :Error;
  }
}

struct AckRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  channelId @2 :Data;
  consumerId @3 :Data;
  # 16 bytes identifying the receiving device's cursor.
  seq @4 :UInt64;
  # Everything up to and including `seq` was delivered to this consumer.
}

struct AckResponse {
  version @0 :UInt16;
  union {
    ok @1 :Void;
    err @2 :Error;
  }
}

# ----------------------------------------------------------------------------------------

struct ServerInfoRequest {
  version @0 :UInt16;
  clientVersion @1 :Text;
  # Free-form client software version (UTF-8, at most 64 bytes), recorded for the
  # compatibility matrix.
}

struct ServerInfoResponse {
  version @0 :UInt16;
  union {
    ok @1 :ServerInfo;
    err @2 :Error;
  }
}

struct ServerInfo {
  minVersion @0 :UInt16;
  maxVersion @1 :UInt16;
  nodeVersion @2 :Text;
  maxPayloadBytes @3 :UInt64;
  maxFetchWaitMs @4 :UInt32;
}

interface Node {
  serverInfo @0 (req :ServerInfoRequest) -> (resp :ServerInfoResponse);

  uploadKeyPackages @1 (req :UploadKeyPackagesRequest) -> (resp :UploadKeyPackagesResponse);
  fetchKeyPackage @2 (req :FetchKeyPackageRequest) -> (resp :FetchKeyPackageResponse);
  keyPackageCount @3 (req :KeyPackageCountRequest) -> (resp :KeyPackageCountResponse);

  enqueue @4 (req :EnqueueRequest) -> (resp :EnqueueResponse);
  fetch @5 (req :FetchRequest) -> (resp :FetchResponse);
  fetchWait @6 (req :FetchWaitRequest) -> (resp :FetchResponse);
  ack @7 (req :AckRequest) -> (resp :AckResponse);
}

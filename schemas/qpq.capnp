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
# - `accessToken` is the caller's bearer token (48 bytes: 16-byte token id, 32-byte secret),
#   obtained from `login` or `refresh`. Every method except `serverInfo`, `register`,
#   `loginChallenge`, `login` and `refresh` requires a valid, unexpired access token of a
#   device that is not revoked: otherwise `Error.unauthenticated` (or `tokenExpired`).

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
  traceparent @5 :Text;
  # Optional W3C Trace Context `traceparent` of the caller's span (55 characters); a node
  # that exports traces makes its spans of the call children of it. Empty: none. A malformed
  # value is ignored, never an error.
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
  traceparent @6 :Text;
  # As in EnqueueRequest.
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
  # The cursor is always the calling device's: empty, or exactly the caller's 16-byte device
  # id (anything else is `forbidden`).
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

# ----------------------------------------------------------------------------------------
# Accounts, devices and tokens (see docs/wire-protocol.md, "Authentication")

enum DeviceStatus {
  pending @0;
  # Registered or added, not logged in yet.
  active @1;
  # Has logged in at least once.
  revoked @2;
  # Permanently disabled; its tokens stopped working when it was revoked.
}

struct RegisterRequest {
  version @0 :UInt16;
  devicePublicKey @1 :Data;
  # 32-byte Ed25519 public key of the first device. It is also the device's MLS signature
  # key and so its KeyPackages' identity.
  signature @2 :Data;
  # 64-byte Ed25519 signature by that key over `qpq_schemas::auth::register_message`.
}

struct RegisterResponse {
  version @0 :UInt16;
  union {
    ok @1 :RegisterOk;
    err @2 :Error;
  }
}

struct RegisterOk {
  accountId @0 :Data;
  # 16 bytes.
  deviceId @1 :Data;
  # 16 bytes.
}

struct LoginChallengeRequest {
  version @0 :UInt16;
  deviceId @1 :Data;
}

struct LoginChallengeResponse {
  version @0 :UInt16;
  union {
    ok @1 :LoginChallengeOk;
    err @2 :Error;
  }
}

struct LoginChallengeOk {
  nonce @0 :Data;
  # 32 random bytes, single use, valid on this node only.
  expiresInMs @1 :UInt32;
}

struct LoginRequest {
  version @0 :UInt16;
  deviceId @1 :Data;
  nonce @2 :Data;
  signature @3 :Data;
  # Ed25519 by the device key over `qpq_schemas::auth::login_message(deviceId, nonce)`.
}

struct RefreshRequest {
  version @0 :UInt16;
  refreshToken @1 :Data;
  # Single use: it is rotated by this call. Presenting a used one again revokes every token
  # issued from the same login.
}

struct TokensResponse {
  version @0 :UInt16;
  union {
    ok @1 :Tokens;
    err @2 :Error;
  }
}

struct Tokens {
  accountId @0 :Data;
  deviceId @1 :Data;
  accessToken @2 :Data;
  accessExpiresAtMs @3 :UInt64;
  refreshToken @4 :Data;
  refreshExpiresAtMs @5 :UInt64;
}

struct AddDeviceRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  # Of an active device of the account (the approver).
  devicePublicKey @2 :Data;
  # The new device's 32-byte Ed25519 key.
  possessionSignature @3 :Data;
  # By the new device's key over `auth::device_possession_message(account, key)`.
  approvalSignature @4 :Data;
  # By the approving (calling) device's key over `auth::add_device_message(account, key)`.
}

struct AddDeviceResponse {
  version @0 :UInt16;
  union {
    ok @1 :AddDeviceOk;
    err @2 :Error;
  }
}

struct AddDeviceOk {
  deviceId @0 :Data;
}

struct ListDevicesRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
}

struct DeviceInfo {
  deviceId @0 :Data;
  publicKey @1 :Data;
  status @2 :DeviceStatus;
}

struct ListDevicesResponse {
  version @0 :UInt16;
  union {
    ok @1 :ListDevicesOk;
    err @2 :Error;
  }
}

struct ListDevicesOk {
  devices @0 :List(DeviceInfo);
}

struct RevokeDeviceRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  deviceId @2 :Data;
  # A device of the caller's account (possibly the caller's own).
}

struct EmptyResponse {
  version @0 :UInt16;
  union {
    ok @1 :Void;
    err @2 :Error;
  }
}

struct FetchKeyPackagesRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  accountId @2 :Data;
}

struct AccountKeyPackage {
  deviceId @0 :Data;
  identity @1 :Data;
  keyPackage @2 :Data;
  lastResort @3 :Bool;
}

struct FetchKeyPackagesResponse {
  version @0 :UInt16;
  union {
    ok @1 :FetchKeyPackagesOk;
    err @2 :Error;
  }
}

struct FetchKeyPackagesOk {
  keyPackages @0 :List(AccountKeyPackage);
  # One per active device of the account that has one left, never the caller's own device.
}

# ----------------------------------------------------------------------------------------
# Channels and membership

struct CreateChannelRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
}

struct ChannelResponse {
  version @0 :UInt16;
  union {
    ok @1 :ChannelOk;
    err @2 :Error;
  }
}

struct ChannelOk {
  channelId @0 :Data;
  dmState @1 :DmState;
  # DMs only (`requested` for group channels).
}

struct MemberRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  channelId @2 :Data;
  accountId @3 :Data;
  admin @4 :Bool;
  # addMember only.
}

struct ChannelRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  channelId @2 :Data;
}

struct Member {
  accountId @0 :Data;
  admin @1 :Bool;
}

struct ListMembersResponse {
  version @0 :UInt16;
  union {
    ok @1 :ListMembersOk;
    err @2 :Error;
  }
}

struct ListMembersOk {
  members @0 :List(Member);
}

enum DmState {
  requested @0;
  # Opened by one account; only it may send until the other accepts.
  accepted @1;
  blocked @2;
  # Nobody sends until the blocking account accepts again.
}

struct DmRequest {
  version @0 :UInt16;
  accessToken @1 :Data;
  peerAccountId @2 :Data;
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

  register @8 (req :RegisterRequest) -> (resp :RegisterResponse);
  loginChallenge @9 (req :LoginChallengeRequest) -> (resp :LoginChallengeResponse);
  login @10 (req :LoginRequest) -> (resp :TokensResponse);
  refresh @11 (req :RefreshRequest) -> (resp :TokensResponse);
  addDevice @12 (req :AddDeviceRequest) -> (resp :AddDeviceResponse);
  listDevices @13 (req :ListDevicesRequest) -> (resp :ListDevicesResponse);
  revokeDevice @14 (req :RevokeDeviceRequest) -> (resp :EmptyResponse);
  fetchKeyPackages @15 (req :FetchKeyPackagesRequest) -> (resp :FetchKeyPackagesResponse);

  createChannel @16 (req :CreateChannelRequest) -> (resp :ChannelResponse);
  addMember @17 (req :MemberRequest) -> (resp :EmptyResponse);
  removeMember @18 (req :MemberRequest) -> (resp :EmptyResponse);
  listMembers @19 (req :ChannelRequest) -> (resp :ListMembersResponse);
  leaveChannel @20 (req :ChannelRequest) -> (resp :EmptyResponse);
  createDm @21 (req :DmRequest) -> (resp :ChannelResponse);
  acceptDm @22 (req :DmRequest) -> (resp :ChannelResponse);
  blockDm @23 (req :DmRequest) -> (resp :ChannelResponse);
}

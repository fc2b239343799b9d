/* registry.h — every descriptor of the gpumatch.v1 contract, listed at build
 * time from protoc-c's output (proto/gen_registry.py), and lookups by full
 * name. Generic code (the JSON mapping, the RPC router, tests) walks these
 * instead of naming messages one by one. */
#ifndef GPUMATCH_V1_REGISTRY_H
#define GPUMATCH_V1_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every message (nested and map-entry messages included), enum and service
 * descriptor of the package, ordered by C symbol name. Static storage. */
extern const ProtobufCMessageDescriptor *const proto_messages[];
extern const size_t proto_message_count;
extern const ProtobufCEnumDescriptor *const proto_enums[];
extern const size_t proto_enum_count;
extern const ProtobufCServiceDescriptor *const proto_services[];
extern const size_t proto_service_count;

/* Look a descriptor up by its full proto name, e.g. "gpumatch.v1.Job",
 * "gpumatch.v1.JobState", "gpumatch.v1.JobService". Returns a borrowed
 * static pointer, or NULL if unknown or name is NULL. Linear in the number
 * of descriptors: callers on a hot path keep what they found. */
const ProtobufCMessageDescriptor *proto_find_message(const char *full_name);
const ProtobufCEnumDescriptor *proto_find_enum(const char *full_name);
const ProtobufCServiceDescriptor *proto_find_service(const char *full_name);

/* protoc-c does not mark the synthetic messages behind map<K,V> fields.
 * Returns true when d is one: a nested message named "<Field>Entry" with
 * exactly the fields key = 1 and value = 2. The contract has no other
 * nested message whose name ends in "Entry" (tests/proto checks this), so a
 * repeated field of such a type is a map and maps to a JSON object.
 * Top-level messages such as LedgerEntry are never map entries. */
bool proto_is_map_entry(const ProtobufCMessageDescriptor *d);

#ifdef __cplusplus
}
#endif
#endif

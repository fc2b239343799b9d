/* registry.c — lookups over the descriptor lists that gen_registry.py
 * writes into registry_list.c. */
#include "gpumatch/v1/registry.h"

#include <string.h>

const ProtobufCMessageDescriptor *proto_find_message(const char *full_name)
{
	if (full_name == NULL)
		return NULL;
	for (size_t i = 0; i < proto_message_count; i++)
		if (strcmp(proto_messages[i]->name, full_name) == 0)
			return proto_messages[i];
	return NULL;
}

const ProtobufCEnumDescriptor *proto_find_enum(const char *full_name)
{
	if (full_name == NULL)
		return NULL;
	for (size_t i = 0; i < proto_enum_count; i++)
		if (strcmp(proto_enums[i]->name, full_name) == 0)
			return proto_enums[i];
	return NULL;
}

const ProtobufCServiceDescriptor *proto_find_service(const char *full_name)
{
	if (full_name == NULL)
		return NULL;
	for (size_t i = 0; i < proto_service_count; i++)
		if (strcmp(proto_services[i]->name, full_name) == 0)
			return proto_services[i];
	return NULL;
}

bool proto_is_map_entry(const ProtobufCMessageDescriptor *d)
{
	size_t short_len, full_len, pkg_len;

	if (d == NULL || d->n_fields != 2)
		return false;
	short_len = strlen(d->short_name);
	full_len = strlen(d->name);
	pkg_len = strlen(d->package_name);
	/* Nested: the full name is longer than "package.Short". */
	if (full_len <= pkg_len + 1 + short_len)
		return false;
	if (short_len <= 5 || strcmp(d->short_name + short_len - 5, "Entry") != 0)
		return false;
	return d->fields[0].id == 1 && strcmp(d->fields[0].name, "key") == 0 &&
	       d->fields[1].id == 2 && strcmp(d->fields[1].name, "value") == 0 &&
	       d->fields[0].label == PROTOBUF_C_LABEL_NONE &&
	       d->fields[1].label == PROTOBUF_C_LABEL_NONE;
}

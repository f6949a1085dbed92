#include "attnvar/version.h"

namespace attnvar {

int version_number() noexcept { return ATTNVAR_VERSION_NUMBER; }
const char* version_string() noexcept { return ATTNVAR_VERSION_STRING; }

}  // namespace attnvar

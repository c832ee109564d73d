// Catch2 v2 (Debian bookworm) and v3 (trixie, vcpkg, Conan) behind one include.
#pragma once

#if LORA_CATCH2_MAJOR >= 3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif

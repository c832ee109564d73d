// lora::safetensors: round trips, the exact bytes the reference Rust crate writes, the real
// checkpoint files, and one test per kind of corrupt file.
#include <lora/safetensors.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "support.hpp"

namespace st = lora::safetensors;
namespace fs = std::filesystem;

namespace {

/// A fresh empty folder, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() / ("lora_safetensors_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

/// The 8-byte little-endian encoding of `n`.
std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

/// A file image: header length, `header`, then `data`.
std::string image(const std::string& header, const std::string& data = "") { return le64(header.size()) + header + data; }

/// The raw bytes of a CPU tensor.
std::string bytes_of(const at::Tensor& t) {
  const auto c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

/// Same dtype, same shape, same bits.
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  INFO("dtype " << a.scalar_type() << " vs " << b.scalar_type() << ", shape " << a.sizes() << " vs " << b.sizes());
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && bytes_of(a) == bytes_of(b);
}

/// The message of the FileError that parsing `bytes` throws, or "<no error>".
std::string error_of(const std::string& bytes) {
  try {
    st::File::from_bytes(bytes, "crafted.safetensors");
  } catch (const lora::FileError& e) {
    return e.what();
  }
  return "<no error>";
}

/// Whether `text` contains `part`, with the text shown on failure.
bool has(const std::string& text, const std::string& part) {
  UNSCOPED_INFO("message: " << text << "\n  expected to contain: " << part);
  return text.find(part) != std::string::npos;
}

/// Checks that parsing `bytes` fails with a message naming the file and containing `part`.
void check_rejected(const std::string& bytes, const std::string& part) {
  const std::string msg = error_of(bytes);
  CHECK(has(msg, "crafted.safetensors"));
  CHECK(has(msg, part));
}

/// A header entry for one tensor.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t b, uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(b) +
         "," + std::to_string(e) + "]}";
}

/// Sample values of `type` with shape `shape`, covering the type's range (and NaN/inf/-0 for floats).
at::Tensor sample(at::ScalarType type, at::IntArrayRef shape) {
  const auto n = c10::multiply_integers(shape);
  if (type == at::kBool) return at::randint(0, 2, {n}).to(at::kBool).reshape(shape);
  if (at::isFloatingType(type)) {
    auto t = (at::randn({n}, at::kDouble) * 1e3).to(type);
    const double specials[] = {std::nan(""), INFINITY, -INFINITY, -0.0};
    for (int64_t i = 0; i < std::min<int64_t>(n, 4); ++i) t[i] = specials[i];
    return t.reshape(shape);
  }
  const int64_t lo = type == at::kByte ? 0 : -100000, hi = type == at::kByte ? 256 : 100000;
  auto t = at::randint(lo, hi, {n}, at::kLong);
  if (type == at::kLong && n > 1) t[1] = std::numeric_limits<int64_t>::min();
  return t.to(type).reshape(shape);
}

const std::vector<at::ScalarType> kAllTypes = {at::kFloat, at::kHalf,  at::kBFloat16, at::kDouble, at::kLong,
                                               at::kInt,   at::kShort, at::kChar,     at::kByte,   at::kBool};

/// The header JSON text of the file at `path`.
std::string header_of(const std::string& path) {
  const std::string bytes = lora_test::read_text(path);
  REQUIRE(bytes.size() >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  REQUIRE(8 + n <= bytes.size());
  return bytes.substr(8, n);
}

}  // namespace

TEST_CASE("safetensors dtype names map to LibTorch types and back", "[safetensors]") {
  const std::vector<std::pair<std::string, at::ScalarType>> names = {
      {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"F64", at::kDouble}, {"I64", at::kLong},
      {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},      {"U8", at::kByte},    {"BOOL", at::kBool}};
  for (const auto& [name, type] : names) {
    INFO(name);
    CHECK(st::dtype_from_string(name) == type);
    CHECK(st::dtype_to_string(type) == name);
  }
  bool unknown_rejected = false;
  try {
    st::dtype_from_string("F99");
  } catch (const lora::FileError& e) {
    unknown_rejected = has(e.what(), "F99");
  }
  CHECK(unknown_rejected);
  bool unsupported_rejected = false;
  try {
    st::dtype_to_string(at::kComplexFloat);
  } catch (const lora::Error& e) {
    unsupported_rejected = has(e.what(), "cannot be stored");
  }
  CHECK(unsupported_rejected);
}

TEST_CASE("safetensors round trip is bit-identical for every dtype and shape", "[safetensors]") {
  torch::manual_seed(7);
  TempDir dir;
  torch::OrderedDict<std::string, at::Tensor> saved;
  for (auto type : kAllTypes) {
    const std::string dt = st::dtype_to_string(type);
    saved.insert(dt + ".matrix", sample(type, {3, 5}));
    saved.insert(dt + ".scalar", sample(type, {}));
    saved.insert(dt + ".empty", sample(type, {0, 4}));
    saved.insert(dt + ".cube", sample(type, {2, 1, 3}));
  }
  const std::string path = dir.file("all.safetensors");
  st::save(path, saved);

  const auto loaded = st::load(path);
  REQUIRE(loaded.size() == saved.size());
  for (const auto& item : saved) {
    INFO(item.key());
    REQUIRE(loaded.contains(item.key()));
    const at::Tensor& got = loaded[item.key()];
    CHECK(same_bits(got, item.value()));
    CHECK(got.device().is_cpu());
  }
  const st::File file(path);
  CHECK(file.info("F32.scalar").shape.empty());
  CHECK(file.info("BOOL.empty").shape == std::vector<int64_t>{0, 4});
  CHECK(file.info("BOOL.empty").begin == file.info("BOOL.empty").end);
  CHECK(file.tensor("I64.scalar").dim() == 0);
}

TEST_CASE("safetensors saves non-contiguous tensors and tensors that require grad", "[safetensors]") {
  TempDir dir;
  auto base = at::arange(12, at::kFloat).reshape({3, 4});
  auto leaf = at::ones({2}, at::kFloat).set_requires_grad(true);
  torch::OrderedDict<std::string, at::Tensor> tensors;
  tensors.insert("transposed", base.t());
  tensors.insert("sliced", base.index({at::indexing::Slice(), at::indexing::Slice(1, 3)}));
  tensors.insert("leaf", leaf);
  st::save(dir.file("x.safetensors"), tensors);
  const auto loaded = st::load(dir.file("x.safetensors"));
  CHECK(at::equal(loaded["transposed"], base.t()));
  CHECK(at::equal(loaded["sliced"], base.index({at::indexing::Slice(), at::indexing::Slice(1, 3)})));
  CHECK(at::equal(loaded["leaf"], at::ones({2})));
  CHECK(!loaded["leaf"].requires_grad());
}

TEST_CASE("safetensors metadata round trips and is omitted when empty", "[safetensors]") {
  TempDir dir;
  torch::OrderedDict<std::string, at::Tensor> tensors;
  tensors.insert("w", at::ones({2}));
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"quoted \"key\"", "line\nbreak \\ and unicode \xc3\xbc"}, {"empty", ""}};
  st::save(dir.file("meta.safetensors"), tensors, meta);
  CHECK(st::File(dir.file("meta.safetensors")).metadata() == meta);
  CHECK(has(header_of(dir.file("meta.safetensors")), "\"__metadata__\":{"));

  st::save(dir.file("plain.safetensors"), tensors);
  CHECK(st::File(dir.file("plain.safetensors")).metadata().empty());
  CHECK(header_of(dir.file("plain.safetensors")).find("__metadata__") == std::string::npos);
}

TEST_CASE("safetensors writes byte for byte what the Rust crate writes", "[safetensors]") {
  // The expected images are the ones in the reference crate's own tests (safetensors/src/tensor.rs).
  TempDir dir;
  const std::string data = bytes_of(at::arange(6, at::kFloat));
  SECTION("one tensor, header already a multiple of 8") {
    torch::OrderedDict<std::string, at::Tensor> t;
    t.insert("attn.0", at::arange(6, at::kFloat).reshape({1, 2, 3}));
    st::save(dir.file("a.safetensors"), t);
    CHECK(lora_test::read_text(dir.file("a.safetensors")) ==
          image("{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}", data));
  }
  SECTION("header padded with spaces to a multiple of 8") {
    torch::OrderedDict<std::string, at::Tensor> t;
    t.insert("attn0", at::arange(6, at::kFloat).reshape({1, 1, 2, 3}));
    st::save(dir.file("b.safetensors"), t);
    CHECK(lora_test::read_text(dir.file("b.safetensors")) ==
          image("{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}       ", data));
  }
  SECTION("no tensors, with and without metadata") {
    st::save(dir.file("c.safetensors"), torch::OrderedDict<std::string, at::Tensor>());
    CHECK(lora_test::read_text(dir.file("c.safetensors")) == image("{}      "));
    st::save(dir.file("d.safetensors"), torch::OrderedDict<std::string, at::Tensor>(), {{"framework", "pt"}});
    CHECK(lora_test::read_text(dir.file("d.safetensors")) == image("{\"__metadata__\":{\"framework\":\"pt\"}}     "));
    CHECK(st::File(dir.file("d.safetensors")).tensors().empty());
  }
  SECTION("every header is padded to a multiple of 8") {
    for (int len = 1; len <= 9; ++len) {
      torch::OrderedDict<std::string, at::Tensor> t;
      t.insert(std::string(len, 'x'), at::zeros({1}));
      const std::string path = dir.file("pad.safetensors");
      st::save(path, t);
      const std::string header = header_of(path);
      INFO("name length " << len << ", header '" << header << "'");
      CHECK(header.size() % 8 == 0);
      CHECK(header.find_last_not_of(' ') == header.find_last_of('}'));
    }
  }
}

TEST_CASE("safetensors orders tensors by name within a dtype, larger dtypes first", "[safetensors]") {
  TempDir dir;
  torch::OrderedDict<std::string, at::Tensor> t;
  t.insert("c", at::zeros({3}, at::kFloat));
  t.insert("a", at::zeros({1}, at::kFloat));
  t.insert("b", at::zeros({2}, at::kFloat));
  SECTION("one dtype: sorted by name") {
    st::save(dir.file("s.safetensors"), t);
    const st::File f(dir.file("s.safetensors"));
    REQUIRE(f.tensors().size() == 3);
    CHECK(f.tensors()[0].name == "a");
    CHECK(f.tensors()[1].name == "b");
    CHECK(f.tensors()[2].name == "c");
    const std::string header = header_of(dir.file("s.safetensors"));
    CHECK(header.find("\"a\"") < header.find("\"b\""));
    CHECK(header.find("\"b\"") < header.find("\"c\""));
    const auto loaded = st::load(dir.file("s.safetensors"));
    CHECK(loaded.keys() == std::vector<std::string>{"a", "b", "c"});
  }
  SECTION("mixed dtypes: as the Python library writes, every tensor aligned to its element size") {
    t.insert("0.byte", at::zeros({3}, at::kByte));
    t.insert("0.long", at::zeros({1}, at::kLong));
    t.insert("0.half", at::zeros({1}, at::kHalf));
    st::save(dir.file("m.safetensors"), t);
    const st::File f(dir.file("m.safetensors"));
    std::vector<std::string> order;
    for (const auto& info : f.tensors()) {
      order.push_back(info.name);
      const int64_t size = c10::elementSize(st::dtype_from_string(info.dtype));
      INFO(info.name << " at " << info.begin);
      CHECK((8 + header_of(dir.file("m.safetensors")).size() + info.begin) % size == 0);
    }
    CHECK(order == std::vector<std::string>{"0.long", "a", "b", "c", "0.half", "0.byte"});
  }
}

TEST_CASE("safetensors save is atomic and replaces an existing file", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  {
    std::ofstream old(path, std::ios::binary);
    old << std::string(1000, 'x');
  }
  torch::OrderedDict<std::string, at::Tensor> t;
  t.insert("w", at::full({2, 2}, 3.0));
  st::save(path, t);
  CHECK(at::equal(st::load(path)["w"], at::full({2, 2}, 3.0)));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
  CHECK(names == std::vector<std::string>{"model.safetensors"});

  bool failed = false;
  try {
    st::save(dir.file("missing/sub/model.safetensors"), t);
  } catch (const lora::FileError& e) {
    failed = has(e.what(), "missing/sub/model.safetensors");
  }
  CHECK(failed);
  CHECK(!fs::exists(dir.path / "missing"));
}

TEST_CASE("safetensors save rejects names and dtypes it cannot store", "[safetensors]") {
  TempDir dir;
  auto rejected = [&](const std::string& name, const at::Tensor& value, const std::string& part) {
    torch::OrderedDict<std::string, at::Tensor> t;
    t.insert(name, value);
    try {
      st::save(dir.file("bad.safetensors"), t);
    } catch (const lora::Error& e) {
      return has(e.what(), part);
    }
    return false;
  };
  CHECK(rejected("__metadata__", at::zeros({1}), "__metadata__"));
  CHECK(rejected("complex", at::zeros({1}, at::kComplexFloat), "cannot be stored"));
  CHECK(rejected("undefined", at::Tensor(), "undefined"));
  CHECK(rejected("bad \xff utf8", at::zeros({1}), "UTF-8"));
  CHECK(!fs::exists(dir.file("bad.safetensors")));
}

TEST_CASE("safetensors reads the fake GPT-2 checkpoint", "[safetensors][data]") {
  const auto path = lora_test::data("checkpoints/fake_gpt2/model.safetensors");
  LORA_REQUIRE_PATH(path);
  const st::File f(path.string());
  REQUIRE(f.tensors().size() == 16);
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  const auto& info = f.info("transformer.h.0.attn.c_attn.weight");
  CHECK(info.dtype == "F32");
  CHECK(info.shape == std::vector<int64_t>{2, 6});
  CHECK(f.info("transformer.wte.weight").shape == std::vector<int64_t>{50257, 2});
  for (size_t i = 1; i < f.tensors().size(); ++i) CHECK(f.tensors()[i - 1].end == f.tensors()[i].begin);

  // The tensor holds exactly the bytes at its offsets in the file.
  const std::string bytes = lora_test::read_text(path);
  const size_t start = 8 + header_of(path.string()).size() + info.begin;
  const at::Tensor w = f.tensor(info.name);
  CHECK(w.scalar_type() == at::kFloat);
  CHECK(bytes_of(w) == bytes.substr(start, info.end - info.begin));

  const auto all = st::load(path.string());
  REQUIRE(all.size() == 16);
  CHECK(all.keys().front() == f.tensors().front().name);
  CHECK(at::equal(all["transformer.h.0.attn.c_attn.weight"], w));
}

TEST_CASE("safetensors reads the lora_linear_tiny fixture and its values match the oracle", "[safetensors][data]") {
  const auto path = lora_test::fixture("lora_linear_tiny/tensors.safetensors");
  const auto expected_path = lora_test::fixture("lora_linear_tiny/expected.json");
  LORA_REQUIRE_PATH(path);
  LORA_REQUIRE_PATH(expected_path);
  const auto tensors = st::load(path.string());
  CHECK(tensors["linear.weight"].sizes() == at::IntArrayRef({12, 8}));
  CHECK(tensors["linear.x"].sizes() == at::IntArrayRef({2, 3, 8}));

  // delta_weight = (B @ A) * scaling, as the Python oracle computed it.
  const auto expected = nlohmann::json::parse(lora_test::read_text(expected_path));
  const auto& cases = expected.at("cases");
  const auto linear = std::find_if(cases.begin(), cases.end(), [](const auto& c) { return c.at("name") == "linear"; });
  REQUIRE(linear != cases.end());
  const auto flat = linear->at("delta_weight").get<std::vector<std::vector<double>>>();
  std::vector<double> values;
  for (const auto& row : flat) values.insert(values.end(), row.begin(), row.end());
  const auto want = torch::tensor(values, torch::kDouble).reshape({12, 8});
  const auto got = at::matmul(tensors["linear.lora_B.weight"], tensors["linear.lora_A.weight"]) *
                   linear->at("scaling").get<double>();
  CHECK(lora_test::allclose(got, want, 1e-4, 1e-4, "delta_weight"));
}

TEST_CASE("safetensors File is movable and reports missing tensors", "[safetensors]") {
  const std::string header = "{" + entry("w", "F32", "[2]", 0, 8) + "}";
  st::File a = st::File::from_bytes(image(header, bytes_of(torch::tensor({1.5f, -2.0f}))), "moved.safetensors");
  st::File b = std::move(a);
  CHECK(b.path() == "moved.safetensors");
  CHECK(b.contains("w"));
  CHECK(!b.contains("v"));
  CHECK(at::equal(b.tensor("w"), torch::tensor({1.5f, -2.0f})));
  bool named = false;
  try {
    b.info("v");
  } catch (const lora::FileError& e) {
    named = has(e.what(), "moved.safetensors") && has(e.what(), "'v'");
  }
  CHECK(named);
  st::File c = st::File::from_bytes(image("{}"));
  c = std::move(b);
  CHECK(c.path() == "moved.safetensors");
  CHECK(at::equal(c.tensor("w"), torch::tensor({1.5f, -2.0f})));
}

TEST_CASE("safetensors accepts what the Rust crate accepts", "[safetensors]") {
  SECTION("an empty header") { CHECK(st::File::from_bytes(image("{}")).tensors().empty()); }
  SECTION("null metadata and unknown fields in an entry") {
    const std::string h = "{\"__metadata__\":null,\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":[1]}}";
    const auto f = st::File::from_bytes(image(h, "ab"));
    CHECK(f.metadata().empty());
    CHECK(bytes_of(f.tensor("w")) == "ab");
  }
  SECTION("entries in any order, zero-size tensors sharing an offset") {
    const std::string h = "{" + entry("z", "U8", "[2]", 1, 3) + "," + entry("e", "F32", "[0,7]", 1, 1) + "," +
                          entry("a", "U8", "[1]", 0, 1) + "}";
    const auto f = st::File::from_bytes(image(h, "xyz"));
    REQUIRE(f.tensors().size() == 3);
    CHECK(f.tensors()[0].name == "a");
    CHECK(f.tensors()[1].name == "e");
    CHECK(f.tensors()[2].name == "z");
    CHECK(f.tensor("e").sizes() == at::IntArrayRef({0, 7}));
  }
  SECTION("BOOL bytes other than 0 and 1 read as true") {
    const auto f = st::File::from_bytes(image("{" + entry("b", "BOOL", "[3]", 0, 3) + "}", std::string("\0\1\x7f", 3)));
    CHECK(at::equal(f.tensor("b"), torch::tensor({false, true, true})));
  }
}

TEST_CASE("safetensors rejects a file shorter than 8 bytes", "[safetensors][corrupt]") {
  check_rejected("", "expected at least 8");
  check_rejected("abc", "3 bytes long");
}

TEST_CASE("safetensors rejects a header length beyond the file or absurdly large", "[safetensors][corrupt]") {
  check_rejected(le64(100) + "{}", "goes beyond the end of the file");
  check_rejected(le64(200'000'000) + "{}      ", "absurdly large");
  check_rejected(le64(~0ull) + "{}", "absurdly large");
}

TEST_CASE("safetensors rejects a header that is not a JSON object", "[safetensors][corrupt]") {
  check_rejected(image("{\"a\":"), "not valid JSON");
  check_rejected(image("{} x"), "not valid JSON");
  check_rejected(image("{\"a\xff\":1}"), "not valid JSON");
  check_rejected(image("[1,2]"), "expected a JSON object");
  check_rejected(image("\"text\""), "expected a JSON object");
  check_rejected(image("{\"x\":" + std::string(200, '[') + std::string(200, ']') + "}"), "nests deeper");
}

TEST_CASE("safetensors rejects an entry that is not an object", "[safetensors][corrupt]") {
  check_rejected(image("{\"w\":5}"), "entry 'w' is a number");
  check_rejected(image("{\"w\":[0,4]}"), "expected an object");
}

TEST_CASE("safetensors rejects missing or wrong-typed fields", "[safetensors][corrupt]") {
  check_rejected(image("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", "1234"), "has no \"dtype\"");
  check_rejected(image("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "1234"), "has no \"shape\"");
  check_rejected(image("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", "1234"), "has no \"data_offsets\"");
  check_rejected(image("{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", "1234"), "\"dtype\" is a number");
  check_rejected(image("{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", "1234"),
                 "\"shape\" is a string");
  check_rejected(image("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", "1234"),
                 "expected an array of 2 integers");
  check_rejected(image("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"a\":1}}}", "1234"),
                 "\"data_offsets\" is an object");
  check_rejected(image("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", "1234"),
                 "data_offsets holds a string");
}

TEST_CASE("safetensors rejects an unknown dtype", "[safetensors][corrupt]") {
  check_rejected(image("{" + entry("w", "F99", "[1]", 0, 4) + "}", "1234"), "unknown or unsupported dtype 'F99'");
  check_rejected(image("{" + entry("w", "U16", "[2]", 0, 4) + "}", "1234"), "dtype 'U16'");
}

TEST_CASE("safetensors rejects a negative or non-integer shape", "[safetensors][corrupt]") {
  check_rejected(image("{" + entry("w", "U8", "[-1]", 0, 0) + "}"), "expected a non-negative integer");
  check_rejected(image("{" + entry("w", "U8", "[1.5]", 0, 1) + "}", "1"), "shape holds a number (1.5)");
  check_rejected(image("{" + entry("w", "U8", "[1,null]", 0, 1) + "}", "1"), "shape holds null");
  check_rejected(image("{" + entry("w", "U8", "[99999999999999999999]", 0, 1) + "}", "1"),
                 "expected a non-negative integer");
  check_rejected(image("{" + entry("w", "U8", "[0,9223372036854775808]", 0, 0) + "}"), "is too large");
}

TEST_CASE("safetensors rejects offsets that run backwards or beyond the data", "[safetensors][corrupt]") {
  check_rejected(image("{" + entry("w", "U8", "[0]", 8, 4) + "}", "12345678"), "begin after they end");
  check_rejected(image("{" + entry("w", "F32", "[2]", 0, 8) + "}", "1234"), "beyond the data section (4 bytes)");
  check_rejected(image("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,-1]}}", "1"),
                 "expected a non-negative integer");
}

TEST_CASE("safetensors rejects a shape that does not match the offsets", "[safetensors][corrupt]") {
  check_rejected(image("{" + entry("w", "F32", "[3]", 0, 8) + "}", "12345678"), "needs 12 bytes but data_offsets [0, 8] span 8");
  check_rejected(image("{" + entry("w", "BF16", "[]", 0, 4) + "}", "1234"), "needs 2 bytes");
}

TEST_CASE("safetensors rejects a shape whose size overflows", "[safetensors][corrupt]") {
  check_rejected(image("{" + entry("w", "F32", "[4294967296,4294967296]", 0, 4) + "}", "1234"), "more bytes than fit in 64 bits");
  check_rejected(image("{" + entry("w", "F64", "[2305843009213693952]", 0, 0) + "}"), "more bytes than fit in 64 bits");
}

TEST_CASE("safetensors rejects overlapping tensors", "[safetensors][corrupt]") {
  const std::string h = "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}";
  check_rejected(image(h, std::string(12, '\0')), "tensor 'b' (data_offsets [4, 12]) overlaps tensor 'a'");
  const std::string same = "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 0, 4) + "}";
  check_rejected(image(same, std::string(4, '\0')), "overlaps");
}

TEST_CASE("safetensors rejects gaps between tensors and trailing data", "[safetensors][corrupt]") {
  const std::string gap = "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}";
  check_rejected(image(gap, std::string(12, '\0')), "gap of 4 bytes between tensor 'a' and tensor 'b'");
  check_rejected(image("{" + entry("a", "F32", "[1]", 4, 8) + "}", std::string(8, '\0')),
                 "between the start of the data section and tensor 'a'");
  check_rejected(image("{" + entry("a", "F32", "[1]", 0, 4) + "}", std::string(8, '\0')),
                 "the data section holds 8 bytes but the last tensor, 'a', ends at 4");
  check_rejected(image("{}", "x"), "the data section holds 1 bytes but there is no tensor");
}

TEST_CASE("safetensors rejects truncated data", "[safetensors][corrupt]") {
  const std::string h = "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[4]", 4, 20) + "}";
  const std::string full = image(h, std::string(20, '\1'));
  CHECK(st::File::from_bytes(full).tensors().size() == 2);
  check_rejected(full.substr(0, full.size() - 3), "tensor 'b': data_offsets end 20 is beyond the data section (17 bytes); the file is truncated");
  check_rejected(full.substr(0, 20), "goes beyond the end of the file");
}

TEST_CASE("safetensors rejects duplicate keys", "[safetensors][corrupt]") {
  const std::string w = entry("w", "U8", "[1]", 0, 1);
  check_rejected(image("{" + w + "," + w + "}", "1"), "duplicate key 'w'");
  check_rejected(image("{\"w\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "1"),
                 "duplicate key 'dtype'");
}

TEST_CASE("safetensors rejects non-string metadata", "[safetensors][corrupt]") {
  check_rejected(image("{\"__metadata__\":{\"format\":\"pt\",\"step\":100}}"), "value for key 'step' is a number");
  check_rejected(image("{\"__metadata__\":[\"pt\"]}"), "\"__metadata__\" is an array");
}

TEST_CASE("safetensors File reports unreadable paths", "[safetensors][corrupt]") {
  TempDir dir;
  auto error = [](const std::string& path) -> std::string {
    try {
      st::File f(path);
    } catch (const lora::FileError& e) {
      return e.what();
    }
    return "<no error>";
  };
  CHECK(has(error(dir.file("absent.safetensors")), "cannot open safetensors file '" + dir.file("absent.safetensors")));
  CHECK(has(error(dir.path.string()), "is not a regular file"));
  std::ofstream(dir.file("empty.safetensors")).close();
  CHECK(has(error(dir.file("empty.safetensors")), "0 bytes long"));
}

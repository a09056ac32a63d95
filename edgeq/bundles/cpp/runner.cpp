// edgeq bundle runner (C++): load model.ort (model.onnx where the manifest's model.ort is null) with onnxruntime's C++ API, run golden pair 000,
// compare with the stored outputs, and honour the export verdict recorded in manifest.json.
// Usage: edgeq_runner BUNDLE_DIR [ATOL] [RTOL]
// Exit codes: 0 pass, 1 outside tolerance or the export check failed (manifest verdict "fail"; an
// "accepted-failed" or "skipped" verdict is printed and exits 0, as run.py and edgeq verify do),
// 2 bad bundle or runtime error.
// The tolerances default to the arm64 target's (atol 1e-3, rtol 1e-2); pass the manifest's golden.atol/rtol.
#include <onnxruntime_cxx_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Npy {
  std::string descr;  // e.g. "<f4"
  std::vector<int64_t> shape;
  std::vector<char> data;
};

bool file_exists(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return f.good();
}

// Minimal reader for the .npy files edgeq writes: version 1/2/3, C order, little-endian.
Npy read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[6];
  f.read(magic, 6);
  if (!f || std::string(magic, 6) != "\x93NUMPY") throw std::runtime_error(path + " is not a .npy file");
  unsigned char ver[2];
  f.read(reinterpret_cast<char*>(ver), 2);
  uint32_t hlen = 0;
  if (ver[0] == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  if (!f || hlen > 65536) throw std::runtime_error(path + ": bad .npy header");
  std::string header(hlen, '\0');
  f.read(&header[0], hlen);
  if (!f) throw std::runtime_error(path + ": truncated header");
  const std::streampos start = f.tellg();  // the data: what is left of the file, the most the header may declare
  f.seekg(0, std::ios::end);
  const std::streamoff left = f.tellg() - start;
  f.seekg(start);
  auto field = [&](const std::string& key) {
    auto k = header.find("'" + key + "'");
    if (k == std::string::npos) throw std::runtime_error(path + ": header lacks " + key);
    return header.substr(header.find(':', k) + 1);
  };
  Npy out;
  std::string d = field("descr");
  auto q1 = d.find('\''), q2 = d.find('\'', q1 + 1);
  out.descr = d.substr(q1 + 1, q2 - q1 - 1);
  if (field("fortran_order").find("True") < field("fortran_order").find(',')) throw std::runtime_error(path + ": Fortran order");
  std::string s = field("shape");
  s = s.substr(s.find('(') + 1, s.find(')') - s.find('(') - 1);
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_of("0123456789") != std::string::npos) out.shape.push_back(std::stoll(item));
  }
  size_t count = 1;
  for (auto v : out.shape) {
    if (v < 0 || (v > 0 && count > SIZE_MAX / static_cast<size_t>(v))) throw std::runtime_error(path + ": bad shape in the header");
    count *= static_cast<size_t>(v);
  }
  size_t item_size = static_cast<size_t>(std::stoi(out.descr.substr(2)));
  if (out.descr[0] == '>') throw std::runtime_error(path + ": big-endian data");
  // the header is data: its shape may not make this runner allocate more than the file holds
  if (item_size == 0 || left < 0 || count > static_cast<size_t>(left) / item_size) {
    throw std::runtime_error(path + ": the header declares more data than the file holds");
  }
  out.data.resize(count * item_size);
  f.read(out.data.data(), static_cast<std::streamsize>(out.data.size()));
  if (!f) throw std::runtime_error(path + ": truncated data");
  return out;
}

ONNXTensorElementDataType ort_type(const std::string& descr) {
  std::string t = descr.substr(1);
  if (t == "f4") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (t == "f8") return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
  if (t == "i8") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  if (t == "i4") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (t == "u1") return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  if (t == "i1") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  if (t == "b1") return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  if (t.size() && (t[0] == 'U' || t[0] == 'S' || t[0] == 'O')) {
    throw std::runtime_error("a golden input holds strings: this C++ example feeds numeric tensors only; check the bundle with python run.py");
  }
  throw std::runtime_error("unsupported .npy dtype " + descr);
}

double value_at(const void* p, ONNXTensorElementDataType t, size_t i) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return static_cast<const float*>(p)[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return static_cast<const double*>(p)[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return static_cast<const int32_t*>(p)[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return static_cast<const uint8_t*>(p)[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return static_cast<const int8_t*>(p)[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return static_cast<const bool*>(p)[i];
    default: throw std::runtime_error("unsupported output element type");
  }
}

// The export verdict from manifest.json: only the top-level "verdict" object (status, reason) and,
// for bundles written before it existed, "verify"."passed". A small strict JSON reader: the manifest
// is data, read bounded, nothing in it is executed or used as a path.
class Json {
 public:
  explicit Json(const std::string& text) : s_(text) {}

  struct Verdict {
    std::string status = "skipped";
    std::string reason = "no verification recorded";
    bool ort_absent = false;  // manifest "model"."ort" is null: the bundle ships model.onnx only (static LLM decoders)
  };

  Verdict verdict() {
    Verdict v;
    bool have_verdict = false, have_verify = false, verify_failed = false;
    ws();
    object([&](const std::string& key) {
      if (key == "verdict" && peek() == '{') {
        object([&](const std::string& k) {
          if (k == "status" && peek() == '"') {
            v.status = str();
            have_verdict = true;
          } else if (k == "reason" && peek() == '"') {
            v.reason = str();
          } else {
            skip(1);
          }
        });
      } else if (key == "model" && peek() == '{') {
        object([&](const std::string& k) {
          if (k == "ort" && s_.compare(i_, 4, "null") == 0) {  // only the null-ness is read: no file name comes from the manifest
            i_ += 4;
            v.ort_absent = true;
          } else {
            skip(1);
          }
        });
      } else if (key == "verify" && peek() == '{') {
        have_verify = true;
        object([&](const std::string& k) {
          if (k == "passed" && s_.compare(i_, 5, "false") == 0) {
            i_ += 5;
            verify_failed = true;
          } else {
            skip(1);
          }
        });
      } else {
        skip(0);
      }
    });
    if (!have_verdict && verify_failed) v.status = "fail", v.reason = "the export check failed (manifest verify.passed = false)";
    else if (!have_verdict && have_verify) v.status = "pass", v.reason = "";  // as run.py reads bundles written before the verdict
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void fail(const char* what) const { throw std::runtime_error(std::string("manifest.json: ") + what); }
  void expect(char c) {
    if (peek() != c) fail("malformed JSON");
    ++i_;
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  std::string str() {
    expect('"');
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c == '\\') {
        if (i_ >= s_.size()) break;
        char e = s_[i_++];
        if (e == 'u') {
          if (i_ + 4 > s_.size()) fail("malformed \\u escape");
          i_ += 4;
          out += '?';  // printed, never interpreted: non-ASCII shows as '?'
          continue;
        }
        out += e == 'n' ? ' ' : e == 't' ? ' ' : e == 'r' ? ' ' : e == 'b' || e == 'f' ? '?' : e;
        continue;
      }
      out += c;
    }
    expect('"');
    return out;
  }
  template <class F>
  void object(F on_key) {
    expect('{');
    ws();
    if (peek() == '}') { ++i_; return; }
    for (;;) {
      ws();
      const std::string k = str();
      ws();
      expect(':');
      ws();
      on_key(k);
      ws();
      if (peek() == ',') { ++i_; continue; }
      expect('}');
      return;
    }
  }
  void skip(int depth) {
    if (depth > 64) fail("nested too deeply");
    ws();
    const char c = peek();
    if (c == '"') {
      str();
    } else if (c == '{') {
      object([&](const std::string&) { skip(depth + 1); });
    } else if (c == '[') {
      ++i_;
      ws();
      if (peek() == ']') { ++i_; return; }
      for (;;) {
        skip(depth + 1);
        ws();
        if (peek() == ',') { ++i_; continue; }
        expect(']');
        return;
      }
    } else {
      const size_t start = i_;
      while (i_ < s_.size() && std::string("+-.0123456789eEtruefalsn").find(s_[i_]) != std::string::npos) ++i_;
      if (i_ == start) fail("malformed JSON");
    }
  }
};

Json::Verdict read_verdict(const std::string& root) {
  const std::string path = root + "/manifest.json";
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("missing " + path);
  f.seekg(0, std::ios::end);
  const std::streamoff size = f.tellg();
  if (size < 0 || size > (16 << 20)) throw std::runtime_error(path + " is larger than 16 MiB");
  f.seekg(0);
  std::string text(static_cast<size_t>(size), '\0');
  f.read(&text[0], size);
  if (!f) throw std::runtime_error("cannot read " + path);
  return Json(text).verdict();
}

std::string printable(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (out.size() >= 500) break;
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string root = argc > 1 ? argv[1] : ".";
  const double atol = argc > 2 ? std::atof(argv[2]) : 1e-3;
  const double rtol = argc > 3 ? std::atof(argv[3]) : 1e-2;
  try {
    const Json::Verdict verdict = read_verdict(root);  // before any work: a malformed manifest is a bad bundle
    if (verdict.status != "pass" && verdict.status != "fail" && verdict.status != "accepted-failed" && verdict.status != "skipped") {
      throw std::runtime_error("manifest.json: unknown verdict status");
    }
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "edgeq");
    Ort::SessionOptions so;
    // model.ort was saved at manifest.json's model.ort_optimization_level; what the full build adds at load
    // time (ALL: layout for this CPU) stays on this device. Minimal builds ignore the level.
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    const std::string model = root + (verdict.ort_absent ? "/model.onnx" : "/model.ort");
    Ort::Session session(env, model.c_str(), so);
    Ort::AllocatorWithDefaultOptions alloc;
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);

    std::vector<Npy> in_data;
    std::vector<Ort::Value> inputs;
    std::vector<std::string> in_names_s, out_names_s;
    for (size_t i = 0; i < session.GetInputCount(); ++i) {
      in_names_s.push_back(session.GetInputNameAllocated(i, alloc).get());
      in_data.push_back(read_npy(root + "/golden/000/in_" + std::to_string(i) + ".npy"));
    }
    for (auto& d : in_data) {
      inputs.push_back(Ort::Value::CreateTensor(mem, d.data.data(), d.data.size(), d.shape.data(), d.shape.size(), ort_type(d.descr)));
    }
    for (size_t i = 0; i < session.GetOutputCount(); ++i) out_names_s.push_back(session.GetOutputNameAllocated(i, alloc).get());
    std::vector<const char*> in_names, out_names;
    for (auto& s : in_names_s) in_names.push_back(s.c_str());
    for (auto& s : out_names_s) out_names.push_back(s.c_str());

    auto outputs = session.Run(Ort::RunOptions{nullptr}, in_names.data(), inputs.data(), inputs.size(), out_names.data(), out_names.size());
    double worst = 0.0;
    bool ok = true;
    for (size_t i = 0; i < outputs.size(); ++i) {
      const std::string path = root + "/golden/000/out_" + std::to_string(i) + ".npy";
      if (!file_exists(path)) throw std::runtime_error("missing " + path);
      // a sequence or map (scikit-learn's ZipMap) or strings: this example compares numeric tensors only
      if (!outputs[i].IsTensor() ||
          outputs[i].GetTensorTypeAndShapeInfo().GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) {
        throw std::runtime_error("output '" + printable(out_names_s[i]) + "' is " +
                                 (outputs[i].IsTensor() ? "a string tensor" : "not a tensor (a sequence or map, e.g. ZipMap)") +
                                 ": this C++ example compares numeric tensors only; check the bundle with python run.py");
      }
      Npy want = read_npy(path);
      auto info = outputs[i].GetTensorTypeAndShapeInfo();
      if (info.GetShape() != want.shape) {
        std::printf("FAIL output %zu: shape differs from the golden output\n", i);
        ok = false;
        continue;
      }
      const auto got_t = info.GetElementType();
      const auto want_t = ort_type(want.descr);
      const void* got = outputs[i].GetTensorRawData();
      for (size_t k = 0; k < info.GetElementCount(); ++k) {
        const double g = value_at(got, got_t, k), w = value_at(want.data.data(), want_t, k);
        if (g == w || (std::isnan(g) && std::isnan(w))) continue;  // the same value, infinity or NaN: reproduced
        const double diff = std::fabs(g - w);
        worst = std::fmax(worst, diff);
        double tol = atol + rtol * std::fabs(w);
        // 8-bit codes (an int8 KV cache): rounding differs by one between CPU kernels; wider integers stay exact
        if (want_t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 || want_t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) tol = std::fmax(tol, 1.0);
        if (!(diff <= tol)) ok = false;
      }
    }
    std::printf("%s golden 000: max abs error %.3g (atol %g, rtol %g), %zu outputs\n", ok ? "PASS" : "FAIL", worst, atol, rtol, outputs.size());
    const std::string why = printable(verdict.reason);
    if (verdict.status == "fail") {
      std::printf("FAIL export check: the bundle failed its check when it was built: %s\n", why.c_str());
      return 1;
    }
    if (verdict.status == "accepted-failed") {
      std::printf("ACCEPTED-FAILED export check failed and the bundle was shipped knowingly (--accept-failed): %s\n", why.c_str());
    } else if (verdict.status == "skipped") {
      std::printf("SKIPPED export check: %s\n", why.empty() ? "nothing was verified" : why.c_str());
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL %s\n", e.what());
    return 2;
  }
}

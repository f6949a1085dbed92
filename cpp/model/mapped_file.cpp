#include "attnvar/model/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "attnvar/error.h"

namespace attnvar {
namespace {

// Closes the descriptor on every exit path; the mapping stays valid after close.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

std::string errno_text() { return std::strerror(errno); }

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) throw MissingError(path + ": no such file");
    throw FormatError(path + ": cannot stat: " + errno_text());
  }
  if (!S_ISREG(st.st_mode)) throw FormatError(path + ": not a regular file");
  if (st.st_size == 0) throw FormatError(path + ": file is empty");
  FdGuard guard{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (guard.fd < 0) throw FormatError(path + ": cannot open: " + errno_text());
  // Re-read the size from the open descriptor: the file may have changed since stat.
  if (::fstat(guard.fd, &st) != 0) throw FormatError(path + ": cannot stat: " + errno_text());
  if (st.st_size <= 0) throw FormatError(path + ": file is empty");
  size_ = static_cast<uint64_t>(st.st_size);
#ifdef ATTNVAR_MAPPED_FILE_HEAP
  auto* buffer = new uint8_t[size_];
  for (uint64_t done = 0; done < size_;) {
    const ssize_t n = ::pread(guard.fd, buffer + done, size_ - done, static_cast<off_t>(done));
    if (n <= 0) {
      delete[] buffer;
      throw FormatError(path + ": cannot read: " + (n < 0 ? errno_text() : "file shrank"));
    }
    done += static_cast<uint64_t>(n);
  }
  data_ = buffer;
#else
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, guard.fd, 0);
  if (p == MAP_FAILED) throw FormatError(path + ": cannot map: " + errno_text());
  data_ = static_cast<const uint8_t*>(p);
#endif
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedFile::drop_pages(const uint8_t* p, uint64_t n) const noexcept {
#ifndef ATTNVAR_MAPPED_FILE_HEAP
  if (data_ == nullptr || p < data_ || p + n > data_ + size_) return;
  const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  // Whole pages inside [p, p + n) only: a neighbour's bytes must stay mapped as they are.
  const uint64_t begin = (static_cast<uint64_t>(p - data_) + page - 1) / page * page;
  const uint64_t end = (static_cast<uint64_t>(p - data_) + n) / page * page;
  if (end > begin) {
    ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
  }
#else
  (void)p;
  (void)n;
#endif
}

void MappedFile::release() noexcept {
#ifdef ATTNVAR_MAPPED_FILE_HEAP
  delete[] data_;
#else
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
#endif
  data_ = nullptr;
  size_ = 0;
}

}  // namespace attnvar

/* cuda-burn: the GPU machine check's workload (see docs/gpu.md, `cargo xtask gpu-check`).
 *
 * Needs only the NVIDIA driver: libcuda.so.1 is opened with dlopen at run time and a spin
 * kernel is loaded from PTX text (JIT-compiled by the driver), so no CUDA toolkit is needed
 * to build or run it.
 *
 *   cuda-burn probe            print how many CUDA devices this process can use (0 and the
 *                              driver's error when none), exit 0
 *   cuda-burn open PATH        open PATH read-write; print "opened" or the errno name
 *                              (EPERM when the device program refuses it), exit 0 / 1
 *   cuda-burn burn MIB SECONDS allocate MIB MiB of device memory, keep every SM busy for
 *                              SECONDS seconds, print progress lines, exit 0
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUmodule;
typedef void *CUfunction;
typedef uint64_t CUdeviceptr;

static CUresult (*cuInit)(unsigned);
static CUresult (*cuDeviceGetCount)(int *);
static CUresult (*cuDeviceGet)(CUdevice *, int);
static CUresult (*cuDeviceGetName)(char *, int, CUdevice);
static CUresult (*cuCtxCreate)(CUcontext *, unsigned, CUdevice);
static CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*cuMemsetD8)(CUdeviceptr, unsigned char, size_t);
static CUresult (*cuModuleLoadData)(CUmodule *, const void *);
static CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
static CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  unsigned, unsigned, void *, void **, void **);
static CUresult (*cuCtxSynchronize)(void);
static CUresult (*cuGetErrorName)(CUresult, const char **);

/* Each thread counts to n, storing every step in its own word (volatile, so the loop cannot
 * be folded). */
static const char PTX[] =
    ".version 8.0\n"
    ".target sm_90\n"
    ".address_size 64\n"
    ".visible .entry spin(.param .u64 out, .param .u64 n)\n"
    "{\n"
    "  .reg .u64 %rd<8>;\n"
    "  .reg .u32 %r<4>;\n"
    "  .reg .pred %p;\n"
    "  ld.param.u64 %rd1, [out];\n"
    "  ld.param.u64 %rd2, [n];\n"
    "  cvta.to.global.u64 %rd4, %rd1;\n"
    "  mov.u32 %r1, %ctaid.x;\n"
    "  mov.u32 %r2, %ntid.x;\n"
    "  mov.u32 %r3, %tid.x;\n"
    "  mad.lo.u32 %r1, %r1, %r2, %r3;\n"
    "  mul.wide.u32 %rd5, %r1, 8;\n"
    "  add.u64 %rd4, %rd4, %rd5;\n"
    "  mov.u64 %rd3, 0;\n"
    "LOOP:\n"
    "  add.u64 %rd3, %rd3, 1;\n"
    "  st.volatile.global.u64 [%rd4], %rd3;\n"
    "  setp.lt.u64 %p, %rd3, %rd2;\n"
    "  @%p bra LOOP;\n"
    "  ret;\n"
    "}\n";

static const char *err_name(CUresult r) {
    const char *name = "unknown";
    if (cuGetErrorName) cuGetErrorName(r, &name);
    return name;
}

#define CHECK(call)                                                                   \
    do {                                                                              \
        CUresult r_ = (call);                                                         \
        if (r_ != 0) {                                                                \
            printf("cuda-burn: %s failed: %s (%d)\n", #call, err_name(r_), r_);       \
            return 2;                                                                 \
        }                                                                             \
    } while (0)

static int load(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) lib = dlopen("/usr/local/nvidia/lib64/libcuda.so.1", RTLD_NOW);
    if (!lib) {
        printf("cuda-burn: cannot load libcuda.so.1: %s\n", dlerror());
        return -1;
    }
#define SYM(name, symbol) *(void **)(&name) = dlsym(lib, symbol)
    SYM(cuInit, "cuInit");
    SYM(cuDeviceGetCount, "cuDeviceGetCount");
    SYM(cuDeviceGet, "cuDeviceGet");
    SYM(cuDeviceGetName, "cuDeviceGetName");
    SYM(cuCtxCreate, "cuCtxCreate_v2");
    SYM(cuMemAlloc, "cuMemAlloc_v2");
    SYM(cuMemsetD8, "cuMemsetD8_v2");
    SYM(cuModuleLoadData, "cuModuleLoadData");
    SYM(cuModuleGetFunction, "cuModuleGetFunction");
    SYM(cuLaunchKernel, "cuLaunchKernel");
    SYM(cuCtxSynchronize, "cuCtxSynchronize");
    SYM(cuGetErrorName, "cuGetErrorName");
    if (!cuInit || !cuDeviceGetCount || !cuDeviceGet || !cuCtxCreate || !cuMemAlloc ||
        !cuMemsetD8 || !cuModuleLoadData || !cuModuleGetFunction || !cuLaunchKernel ||
        !cuCtxSynchronize) {
        printf("cuda-burn: libcuda.so.1 lacks a driver API function\n");
        return -1;
    }
    return 0;
}

/* Two blocks per SM of an H200 (132 SMs). */
#define BLOCKS 264
#define THREADS 256

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int probe(void) {
    if (load() != 0) {
        printf("cuda devices: 0 (no libcuda)\n");
        return 0;
    }
    CUresult r = cuInit(0);
    int count = 0;
    if (r == 0) r = cuDeviceGetCount(&count);
    if (r != 0)
        printf("cuda devices: 0 (%s)\n", err_name(r));
    else
        printf("cuda devices: %d\n", count);
    return 0;
}

static int open_device(const char *path) {
    int fd = open(path, O_RDWR);
    if (fd >= 0) {
        printf("open %s: opened\n", path);
        close(fd);
        return 0;
    }
    int e = errno;
    const char *name = strerrorname_np(e);
    printf("open %s: %s (%s)\n", path, name ? name : "unknown errno", strerror(e));
    return 1;
}

static int burn(size_t mib, double seconds) {
    if (load() != 0) return 2;
    CUdevice dev;
    CUcontext ctx;
    CUmodule module;
    CUfunction spin;
    CUdeviceptr buffer, out;
    char name[128] = "";
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    if (cuDeviceGetName) cuDeviceGetName(name, sizeof name, dev);
    CHECK(cuCtxCreate(&ctx, 0, dev));
    CHECK(cuMemAlloc(&buffer, mib << 20));
    /* Touch it all, so that it is resident. */
    CHECK(cuMemsetD8(buffer, 0x5a, mib << 20));
    CHECK(cuMemAlloc(&out, (size_t)BLOCKS * THREADS * sizeof(uint64_t)));
    CHECK(cuModuleLoadData(&module, PTX));
    CHECK(cuModuleGetFunction(&spin, module, "spin"));
    printf("cuda-burn: %s: %zu MiB allocated, spinning for %.0f s\n", name, mib, seconds);
    fflush(stdout);
    uint64_t n = 1000000; /* steps per launch */
    void *params[] = {&out, &n};
    double start = now(), last = start;
    unsigned long launches = 0;
    while (now() - start < seconds) {
        CHECK(cuLaunchKernel(spin, BLOCKS, 1, 1, THREADS, 1, 1, 0, NULL, params, NULL));
        CHECK(cuCtxSynchronize());
        launches++;
        if (now() - last >= 5.0) {
            printf("cuda-burn: %lu launches in %.0f s\n", launches, now() - start);
            fflush(stdout);
            last = now();
        }
    }
    printf("cuda-burn: done, %lu launches\n", launches);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && strcmp(argv[1], "probe") == 0) return probe();
    if (argc == 3 && strcmp(argv[1], "open") == 0) return open_device(argv[2]);
    if (argc == 4 && strcmp(argv[1], "burn") == 0)
        return burn((size_t)strtoull(argv[2], NULL, 10), strtod(argv[3], NULL));
    fprintf(stderr, "usage: cuda-burn probe | open PATH | burn MIB SECONDS\n");
    return 64;
}

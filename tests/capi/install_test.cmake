cmake_minimum_required(VERSION 3.25)
# cmake -DBUILD_DIR=... -DWORK_DIR=... -DSOURCE_DIR=tests/capi/install -DGENERATOR=Ninja
#       -DC_COMPILER=cc -DCXX_COMPILER=c++ -P this
#
# Installs the already built C API from BUILD_DIR into WORK_DIR/prefix, checks what landed
# there, then builds and runs SOURCE_DIR's C and C++ programs against that prefix two ways:
# with find_package(Lattice) (C on Lattice::lattice, C++ on Lattice::lattice_static) and with
# pkg-config (C on `lattice`, C++ on `lattice-static`).
foreach(var BUILD_DIR WORK_DIR SOURCE_DIR GENERATOR C_COMPILER CXX_COMPILER)
  if(NOT ${var})
    message(FATAL_ERROR "install_test: -D${var}=... is required")
  endif()
endforeach()

function(run)
  cmake_parse_arguments(PARSE_ARGV 0 ARG "" "OUTPUT_VARIABLE" "COMMAND;ENV")
  if(ARG_ENV)
    set(command ${CMAKE_COMMAND} -E env ${ARG_ENV} ${ARG_COMMAND})
  else()
    set(command ${ARG_COMMAND})
  endif()
  execute_process(COMMAND ${command} RESULT_VARIABLE result OUTPUT_VARIABLE out
                  ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT result EQUAL 0)
    string(REPLACE ";" " " shown "${command}")
    message(FATAL_ERROR "install_test: failed (${result}): ${shown}\n${out}\n${err}")
  endif()
  if(ARG_OUTPUT_VARIABLE)
    set(${ARG_OUTPUT_VARIABLE} "${out}" PARENT_SCOPE)
  endif()
endfunction()

set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# 1. Install, and look at what landed in the prefix.
run(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --component lattice)
file(GLOB_RECURSE installed RELATIVE ${prefix} LIST_DIRECTORIES false ${prefix}/*)
list(SORT installed)
string(REPLACE ";" "\n  " listing "${installed}")
message(STATUS "installed:\n  ${listing}")
file(GLOB pc_dirs ${prefix}/lib*/pkgconfig ${prefix}/lib/*/pkgconfig)
list(GET pc_dirs 0 pc_dir)
get_filename_component(lib_dir ${pc_dir} DIRECTORY)
foreach(file include/lattice/lattice.h)
  if(NOT EXISTS ${prefix}/${file})
    message(FATAL_ERROR "install_test: ${file} was not installed")
  endif()
endforeach()
foreach(file liblattice.so liblattice.a pkgconfig/lattice.pc pkgconfig/lattice-static.pc
             cmake/Lattice/LatticeConfig.cmake cmake/Lattice/LatticeConfigVersion.cmake
             cmake/Lattice/LatticeTargets.cmake cmake/Lattice/LatticeStaticTargets.cmake)
  if(NOT EXISTS ${lib_dir}/${file})
    message(FATAL_ERROR "install_test: ${lib_dir}/${file} was not installed")
  endif()
endforeach()
# Only the C header: the C++ headers are not part of the installed API.
if(EXISTS ${prefix}/include/lattice/lattice.hpp)
  message(FATAL_ERROR "install_test: the C++ header was installed")
endif()

function(expect_ok program)
  run(COMMAND ${program} ENV LD_LIBRARY_PATH=${lib_dir} OUTPUT_VARIABLE out)
  if(NOT out MATCHES "^consumer ok: ")
    message(FATAL_ERROR "install_test: ${program} printed '${out}'")
  endif()
  message(STATUS "${program}: ${out}")
endfunction()

# 2. find_package(Lattice), in a fresh CMake project.
run(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/cmake-build -G ${GENERATOR}
            -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix}
            -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
run(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/cmake-build)
expect_ok(${WORK_DIR}/cmake-build/consumer_c)
expect_ok(${WORK_DIR}/cmake-build/consumer_cxx)

# 3. pkg-config.
find_program(PKG_CONFIG NAMES pkg-config pkgconf REQUIRED)
set(pc_env PKG_CONFIG_PATH=${pc_dir})
run(COMMAND ${PKG_CONFIG} --cflags --libs lattice ENV ${pc_env} OUTPUT_VARIABLE shared_flags)
separate_arguments(shared_flags UNIX_COMMAND "${shared_flags}")
run(COMMAND ${C_COMPILER} -std=c11 ${SOURCE_DIR}/consumer.c ${shared_flags}
            -o ${WORK_DIR}/pc_consumer_c)
expect_ok(${WORK_DIR}/pc_consumer_c)
run(COMMAND ${PKG_CONFIG} --cflags --libs lattice-static ENV ${pc_env}
    OUTPUT_VARIABLE static_flags)
separate_arguments(static_flags UNIX_COMMAND "${static_flags}")
run(COMMAND ${CXX_COMPILER} -std=c++17 ${SOURCE_DIR}/consumer.cpp ${static_flags}
            -o ${WORK_DIR}/pc_consumer_cxx)
expect_ok(${WORK_DIR}/pc_consumer_cxx)
# The static program carries Lattice inside: it must not need liblattice.so.
run(COMMAND ${CMAKE_COMMAND} -E env LD_LIBRARY_PATH=/nonexistent ${WORK_DIR}/pc_consumer_cxx
    OUTPUT_VARIABLE out)
message(STATUS "install_test: ok")

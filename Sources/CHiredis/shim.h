#ifndef ROTA_CHIREDIS_SHIM_H
#define ROTA_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#endif

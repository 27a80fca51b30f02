module ctxcore.invalid/gobench

go 1.19

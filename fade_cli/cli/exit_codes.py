"""Exit codes that shell scripts on inspection stations rely on."""

OK = 0  # done, and no image judged NG
NG = 1  # done, at least one image judged NG (needs --threshold)
USAGE = 2  # usage or input error: bad option, missing folder, malformed file
FAILURE = 3  # failure while running: model cannot be loaded, out of memory
INTERRUPTED = 130  # Ctrl-C; commands that score images save the finished results first

EXIT_CODES_HELP = """\b
Exit codes:
  0    done, no image NG
  1    done, at least one image NG (with --threshold)
  2    usage or input error
  3    failure while running (model, memory)
  130  interrupted (Ctrl-C); finished results are saved"""

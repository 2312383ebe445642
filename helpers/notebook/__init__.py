"""What a notebook's Setup cell needs and the teaching code does not: the installed-version
check (`environment`) and TensorFlow imported without its C++ start-up lines
(`quiet_tensorflow`)."""

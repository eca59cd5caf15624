<?php
// Appends N lines to a log under flock, as Monolog's StreamHandler does with locking on.
[$_, $path, $tag, $n] = $argv;
$f = fopen($path, 'a');
for ($i = 0; $i < (int)$n; $i++) {
    flock($f, LOCK_EX);
    fwrite($f, sprintf("%s %05d %s\n", $tag, $i, str_repeat('x', 60)));
    fflush($f);
    flock($f, LOCK_UN);
}
fclose($f);
